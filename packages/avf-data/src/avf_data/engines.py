"""Execution engines: a local process pool (default) or Ray tasks.

Both run :func:`avf_data.pipeline.process_task` once per task (a group of inputs whose clips
share shards) and yield task results as they finish; the driver alone touches the done-log,
so engines only differ in where the work runs. Every worker builds its sync scorer once (on
its first task) and reuses it.

Crashes (a worker process killed by a segfault or the OOM killer): the task is retried; a
task caught in three crashes is split and its inputs retried one by one, and an input that
still crashes on its own is rejected with stage ``error``. So every input of a task ends up
accounted for. The local pool charges a crash to every task in flight at that moment, so a
task reaching three crashes is rerun alone before any verdict (no innocent bystanders).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .config import BuildConfig

Item = tuple[str, dict[str, Any] | None]  # (path, label or None)
Task = tuple[str, list[Item]]  # (task id, its inputs in order)

MAX_TRIES = 3

_WORKER_CFG: BuildConfig | None = None
_WORKER_ARGS: tuple[str | None, str | None] = (None, None)


def _watch_driver(pid: int) -> None:
    """Exit when the driver is gone (kill -9): pool workers would otherwise wait forever."""
    import time

    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # pragma: no cover - pid reused by another user's process
            os._exit(0)


def _init_worker(
    cfg_dict: dict[str, Any], out_dir: str | None, weights: str | None, driver_pid: int | None = None
) -> None:
    global _WORKER_CFG, _WORKER_ARGS
    os.environ["OMP_NUM_THREADS"] = "1"
    if driver_pid is not None and driver_pid != os.getpid():
        import threading

        threading.Thread(target=_watch_driver, args=(driver_pid,), daemon=True, name="avf-watch-driver").start()
    _WORKER_CFG = BuildConfig.from_dict(cfg_dict)
    _WORKER_ARGS = (out_dir, weights)
    from .pipeline import get_context

    get_context(_WORKER_CFG, weights)  # build the sync scorer once per process


def _run_task(task: Task) -> dict[str, Any]:
    from .pipeline import process_task

    tid, items = task
    out_dir, weights = _WORKER_ARGS
    assert _WORKER_CFG is not None
    return process_task(items, out_dir, _WORKER_CFG, weights, tid=tid)


WORKER_MEMORY_BYTES = 1_500_000_000  # peak RSS budget of one curation worker (tools/bench/real.py)


def default_workers() -> int:
    """One worker per core, but no more than the machine's memory holds at
    ``WORKER_MEMORY_BYTES`` each (with 1 GB left for the driver and the system)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        cores = max(1, os.cpu_count() or 1)
    avail = available_memory()
    if avail is None:  # pragma: no cover - not Linux
        return cores
    return max(1, min(cores, int((avail - 1_000_000_000) // WORKER_MEMORY_BYTES)))


def available_memory() -> int | None:
    """Bytes the kernel can hand out now: ``MemAvailable`` (free memory plus the page cache it
    can drop), not just the free pages, which a machine that has read a lot keeps low."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def single_tasks(task: Task) -> list[Task]:
    """A failed task split into one task per input (each with its own task id)."""
    from .pipeline import input_id, task_id

    return [(task_id([input_id(item[0])]), [item]) for item in task[1]]


def _discard(out_dir: str | None, task: Task) -> None:
    """Remove the shards of a task that will not be committed (a crash may have left some)."""
    if out_dir is None:
        return
    from .pipeline import task_files

    for p in task_files(out_dir, task[0]):
        try:
            os.remove(p)
        except OSError:  # pragma: no cover
            pass


def run_local(
    tasks: list[Task], cfg: BuildConfig, out_dir: str | None, weights: str | None, workers: int
) -> Iterator[dict[str, Any]]:
    """Process pool; ``workers=0`` runs inline in this process (debugging)."""
    cfg_dict = cfg.to_dict()
    if workers <= 0:
        _init_worker(cfg_dict, out_dir, weights)
        for t in tasks:
            yield _run_task(t)
        return
    # forkserver: workers fork from a clean single-threaded server that imported the heavy
    # libraries once (the driver may run threads: tqdm, Ray, torch); spawn where unsupported.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        try:
            ctx.set_forkserver_preload(["avf_data._preload"])
        except Exception:  # pragma: no cover
            pass
    else:  # pragma: no cover
        ctx = mp.get_context("spawn")
    tries: dict[str, int] = {}  # task id -> crashes it was caught in
    shared = list(tasks)  # run side by side
    alone: list[Task] = []  # run one at a time, so that a crash is surely theirs
    while shared or alone:
        solo = not shared
        queue, width = (alone, 1) if solo else (shared, min(workers, len(shared)))
        crashed: list[Task] = []
        unsent: list[Task] = []
        with ProcessPoolExecutor(
            max_workers=width,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(cfg_dict, out_dir, weights, os.getpid()),
        ) as pool:
            pending: dict = {}
            it = iter(queue)
            limit = 1 if solo else 2 * width  # a bounded queue keeps memory flat with many tasks
            for task in it:
                pending[pool.submit(_run_task, task)] = task
                if len(pending) >= limit:
                    break
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    task = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        crashed.append(task)
                        continue
                    yield result
                    nxt = next(it, None)
                    if nxt is not None:
                        try:
                            pending[pool.submit(_run_task, nxt)] = nxt
                        except BrokenProcessPool:
                            unsent.append(nxt)
            unsent.extend(it)  # not submitted because the pool broke
        if solo:
            alone = unsent
        else:
            shared = unsent
        # A worker died (segfault in a native library, out-of-memory kill): every task in
        # flight failed with it. Retry them; after three crashes a task runs alone, and a
        # crash while alone is its own: a task of several inputs is split into single-input
        # tasks (run alone), a single input is rejected.
        to_alone: list[Task] = []
        for task in crashed:
            tries[task[0]] = tries.get(task[0], 0) + 1
            own = len(crashed) == 1
            if tries[task[0]] < MAX_TRIES:
                (alone if solo else shared).append(task)
            elif not own:
                to_alone.append(task)
            else:
                _discard(out_dir, task)
                if len(task[1]) > 1:
                    to_alone.extend(single_tasks(task))
                else:
                    yield _crash_task(task, cfg)
        alone.extend(to_alone)


CRASH_REASON = f"worker process crashed while curating this input ({MAX_TRIES} tries)"


def _crash_task(task: Task, cfg: BuildConfig, reason: str = CRASH_REASON) -> dict[str, Any]:
    """The result of a task whose inputs are rejected because it keeps crashing."""
    recs = [_crash_result(path, cfg, reason) for path, _ in task[1]]
    for rec in recs:
        rec["task_id"] = task[0]
    return {"task_id": task[0], "shards": [], "inputs": recs}


def _crash_result(path: str, cfg: BuildConfig, reason: str = CRASH_REASON) -> dict[str, Any]:
    from .pipeline import rejected_input

    return rejected_input(path, cfg, "error.crash", reason)


RAY_CONNECT_TIMEOUT = 10.0


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT) -> None:
    """Fail fast when ``host:port`` does not answer: ``ray.init`` would wait for minutes."""
    import socket

    if address in ("auto", "local") or address.startswith(("ray://", "anyscale://")):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r}: expected HOST:PORT, 'auto' or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(
            f"--ray-address {address!r}: no Ray cluster answers there "
            f"({exc.strerror or type(exc).__name__}); is `ray start --head` running?"
        ) from None


def _ray_task(task: Task, cfg_dict: dict[str, Any], out_dir: str | None, weights: str | None) -> dict[str, Any]:
    global _WORKER_CFG, _WORKER_ARGS
    if _WORKER_CFG is None or _WORKER_CFG.to_dict() != cfg_dict or _WORKER_ARGS != (out_dir, weights):
        _init_worker(cfg_dict, out_dir, weights)  # once per Ray worker process
    return _run_task(task)


def run_ray(
    tasks: list[Task],
    cfg: BuildConfig,
    out_dir: str | None,
    weights: str | None,
    workers: int,
    address: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Ray tasks (one per task of inputs, 1 CPU each). Starts a local Ray instance unless
    ``address``. A task that fails (after Ray's own retry of a crashed worker) is split into
    single-input tasks; a single input that fails is rejected."""
    # Ray (>= 2.43) re-runs workers through `uv run` when the driver was started by it,
    # which builds a second environment per session (and needs a download of Python where
    # uv cannot find one). Workers on this machine should simply use this interpreter.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError as exc:  # pragma: no cover
        raise SystemExit("the ray engine needs Ray: pip install 'avf-data[distributed]'") from exc
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}},
        }
        try:
            if address:
                check_ray_address(address)
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=max(1, workers), **kwargs)
        except ValueError:
            raise
        except Exception as exc:  # auth required, version mismatch, GCS gone: one line, not a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(
                f"cannot start or join Ray{f' at {address}' if address else ''}: {type(exc).__name__}: {first}"
            ) from None
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(_ray_task)
        cfg_dict = cfg.to_dict()
        cfg_ref = ray.put(cfg_dict)
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", workers or 1)))
        queue: list[Task] = list(reversed(tasks))  # pop() from the end = input order
        pending: dict = {}
        while queue or pending:
            while queue and len(pending) < limit:
                task = queue.pop()
                pending[remote.remote(task, cfg_ref, out_dir, weights)] = task
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except (
                    ray.exceptions.WorkerCrashedError,
                    ray.exceptions.RayTaskError,
                    ray.exceptions.OutOfMemoryError,
                ) as exc:
                    _discard(out_dir, task)
                    if len(task[1]) > 1:
                        queue.extend(reversed(single_tasks(task)))
                    else:
                        yield _crash_task(task, cfg, f"{CRASH_REASON}; Ray: {type(exc).__name__}")
    finally:
        if started:
            ray.shutdown()
