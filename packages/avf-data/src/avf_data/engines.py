"""Execution engines: a local process pool (default) or a pool of Ray actors.

Both run :func:`avf_data.pipeline.process_task` once per task (a group of inputs whose clips
go into one segment) and yield task results as they finish; the driver alone touches the build
log, so engines only differ in where the work runs. Tasks are pulled from the driver's
iterator as workers free up (a bounded window in flight), so no list of a corpus's tasks is
ever held. Every worker imports the heavy libraries and builds its detectors and sync scorer
once, before its first task: the local pool forks from a server that did it, a Ray actor does
it when it starts.

Crashes (a worker process killed by a segfault or the OOM killer): the task is retried; a
task caught in three crashes is split and its inputs retried one by one, and an input that
still crashes on its own is rejected with stage ``error``. So every input of a task ends up
accounted for. The local pool charges a crash to every task in flight at that moment, so a
task reaching three crashes is rerun alone before any verdict (no innocent bystanders).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from .config import BuildConfig

Item = tuple[str, dict[str, Any] | None]  # (path, label or None)


@dataclass
class Task:
    """Consecutive pending inputs curated together; ``seq`` is the position of the first one in
    the run (the order the store packs segments in); ``thumbs`` says which reject rows get a
    picture (the driver's policy when the task was handed out)."""

    task_id: str
    seq: int
    items: list[Item]
    thumbs: dict[str, Any] | None = None


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

    out_dir, weights = _WORKER_ARGS
    assert _WORKER_CFG is not None
    return process_task(task.items, out_dir, _WORKER_CFG, weights, tid=task.task_id, seq=task.seq, thumbs=task.thumbs)


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
    """A failed task split into one task per input (each with its own task id and position)."""
    from .pipeline import input_id, task_id

    return [Task(task_id([input_id(item[0])]), task.seq + i, [item], task.thumbs) for i, item in enumerate(task.items)]


def _discard(out_dir: str | None, task: Task) -> None:
    """Remove the segment of a task that will not be committed (a crash may have left one)."""
    if out_dir is not None:
        from .store.folder import OutputFolder

        OutputFolder(out_dir).segment(task.task_id).unlink(missing_ok=True)


def _pool_phase(pool: ProcessPoolExecutor, first: Task, more, window: int, requeue: deque[Task]):
    """Run ``first`` and, while ``more`` gives tasks, up to ``window`` at a time on ``pool``;
    yields results as they finish. Returns the tasks caught in a crash of the pool (its
    remaining tasks wait in ``requeue``)."""
    pending: dict = {}
    crashed: list[Task] = []

    def submit(task: Task) -> bool:
        try:
            pending[pool.submit(_run_task, task)] = task
            return True
        except BrokenProcessPool:  # the pool broke meanwhile: the task waits for the next one
            requeue.appendleft(task)
            return False

    submit(first)
    while more is not None and len(pending) < window:  # a bounded window keeps memory flat
        task = more()
        if task is None or not submit(task):
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
            if more is not None and not crashed:
                nxt = more()
                if nxt is not None:
                    submit(nxt)
    return crashed


def run_local(
    tasks: Iterable[Task], cfg: BuildConfig, out_dir: str | None, weights: str | None, workers: int
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
    fresh = iter(tasks)
    retry: deque[Task] = deque()  # crashed alongside others: run side by side again
    alone: deque[Task] = deque()  # run one at a time, so that a crash is surely theirs
    tries: dict[str, int] = {}  # task id -> crashes it was caught in

    def next_shared() -> Task | None:
        return retry.popleft() if retry else next(fresh, None)

    while True:
        first = next_shared()
        solo = first is None
        if first is None:
            if not alone:
                return
            first = alone.popleft()
        pool = ProcessPoolExecutor(
            max_workers=1 if solo else workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(cfg_dict, out_dir, weights, os.getpid()),
        )
        with pool:
            requeue = alone if solo else retry
            crashed = yield from _pool_phase(pool, first, None if solo else next_shared, 2 * workers, requeue)
        # A worker died (segfault in a native library, out-of-memory kill): every task in
        # flight failed with it. Retry them; after three crashes a task runs alone, and a
        # crash while alone is its own: a task of several inputs is split into single-input
        # tasks (run alone), a single input is rejected.
        for task in crashed:
            tries[task.task_id] = tries.get(task.task_id, 0) + 1
            own = len(crashed) == 1
            if tries[task.task_id] < MAX_TRIES:
                (alone if solo else retry).append(task)
            elif not own:
                alone.append(task)
            else:
                _discard(out_dir, task)
                if len(task.items) > 1:
                    alone.extend(single_tasks(task))
                else:
                    yield _crash_task(task, cfg)


CRASH_REASON = f"worker process crashed while curating this input ({MAX_TRIES} tries)"


def _crash_task(task: Task, cfg: BuildConfig, reason: str = CRASH_REASON) -> dict[str, Any]:
    """The result of a task whose inputs are rejected because it keeps crashing."""
    recs = [_crash_result(path, cfg, reason) for path, _ in task.items]
    return {"task_id": task.task_id, "seq": task.seq, "n": len(task.items), "segment": None, "inputs": recs}


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


class CurationActor:
    """One Ray worker process of ``avf-data build``: imports the libraries and builds the
    detectors and the sync scorer when it starts, as the local pool's workers inherit them,
    so no task pays for them."""

    def __init__(self, cfg_dict: dict[str, Any], out_dir: str | None, weights: str | None) -> None:
        from .pipeline import preload_modules

        os.environ["OMP_NUM_THREADS"] = "1"
        preload_modules()
        _init_worker(cfg_dict, out_dir, weights)

    def run(self, task: Task) -> dict[str, Any]:
        return _run_task(task)


def run_ray(
    tasks: Iterable[Task],
    cfg: BuildConfig,
    out_dir: str | None,
    weights: str | None,
    workers: int,
    address: str | None = None,
) -> Iterator[dict[str, Any]]:
    """A pool of :class:`CurationActor` (one CPU each: ``workers`` of them on a local Ray, one
    per CPU of a joined cluster). Starts a local Ray instance unless ``address``. A task that
    fails (after Ray restarted a crashed actor and retried it once) is split into single-input
    tasks; a single input that fails is rejected."""
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
        n = max(1, workers if not address else int(ray.cluster_resources().get("CPU", workers or 1)))
        actor_cls = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=1)(CurationActor)
        cfg_ref = ray.put(cfg.to_dict())
        free = [actor_cls.remote(cfg_ref, out_dir, weights) for _ in range(n)]
        fresh = iter(tasks)
        retry: deque[Task] = deque()
        pending: dict = {}
        while True:
            while free:
                task = retry.popleft() if retry else next(fresh, None)
                if task is None:
                    break
                actor = free.pop()
                pending[actor.run.remote(task)] = (task, actor)
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task, actor = pending.pop(ref)
                free.append(actor)
                try:
                    yield ray.get(ref)
                except (
                    ray.exceptions.RayActorError,
                    ray.exceptions.RayTaskError,
                    ray.exceptions.OutOfMemoryError,
                ) as exc:
                    _discard(out_dir, task)
                    if len(task.items) > 1:
                        retry.extend(single_tasks(task))
                    else:
                        yield _crash_task(task, cfg, f"{CRASH_REASON}; Ray: {type(exc).__name__}")
    finally:
        if started:
            ray.shutdown()
