"""Execution engines: a local process pool (default) or Ray tasks.

Both run :func:`avf_data.pipeline.process_input` once per input and yield results as they
finish; the driver alone touches the done-log, so engines only differ in where the work runs.
Every worker builds its sync scorer once (on its first input) and reuses it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .config import BuildConfig

Task = tuple[str, dict[str, Any] | None]  # (path, label or None)

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


def _init_worker(cfg_dict: dict[str, Any], out_dir: str | None, weights: str | None,
                 driver_pid: int | None = None) -> None:
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
    from .pipeline import process_input

    path, label = task
    crash_on = os.environ.get("AVF_DATA_TEST_CRASH_ON")  # test hook: simulate a native crash
    if crash_on and os.path.basename(path) == crash_on:
        os._exit(70)
    out_dir, weights = _WORKER_ARGS
    assert _WORKER_CFG is not None
    return process_input(path, out_dir, _WORKER_CFG, weights, label=label)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def run_local(tasks: list[Task], cfg: BuildConfig, out_dir: str | None, weights: str | None,
              workers: int) -> Iterator[dict[str, Any]]:
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
    workers = min(workers, max(1, len(tasks)))
    attempts: dict[int, int] = {}
    queue = list(enumerate(tasks))
    while queue:
        crashed: list[tuple[int, Task]] = []
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(cfg_dict, out_dir, weights, os.getpid())) as pool:
            pending: dict = {}
            it = iter(queue)
            for item in it:  # a bounded queue keeps memory flat with many inputs
                pending[pool.submit(_run_task, item[1])] = item
                if len(pending) >= 2 * workers:
                    break
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    item = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        crashed.append(item)
                        continue
                    yield result
                    nxt = next(it, None)
                    if nxt is not None:
                        try:
                            pending[pool.submit(_run_task, nxt[1])] = nxt
                        except BrokenProcessPool:
                            crashed.append(nxt)
            crashed.extend(it)  # not submitted because the pool broke
        # A worker died (segfault in a native library, out-of-memory kill): retry the inputs
        # that were in flight in a fresh pool; an input caught in three crashes is rejected.
        queue = []
        for i, task in crashed:
            attempts[i] = attempts.get(i, 0) + 1
            if attempts[i] >= 3:
                yield _crash_result(task[0])
            else:
                queue.append((i, task))


def _crash_result(path: str, reason: str = "worker process crashed while curating this input (3 tries)"
                  ) -> dict[str, Any]:
    from .media import path_text, probe_seconds
    from .pipeline import InputResult, input_id

    res = InputResult(input_id=input_id(path), source=path_text(path))
    dur = probe_seconds(path) if os.path.exists(path) else 0.0
    res.seconds = round(int(dur * 25 + 1e-6) / 25, 6)
    res.count("decode", 1, 0, res.seconds, 0.0)
    res.reject("error", 0.0, res.seconds, reason)
    return res.to_dict()


def _ray_task(path: str, label: dict[str, Any] | None, cfg_dict: dict[str, Any], out_dir: str | None,
              weights: str | None) -> dict[str, Any]:
    global _WORKER_CFG, _WORKER_ARGS
    if _WORKER_CFG is None or _WORKER_CFG.to_dict() != cfg_dict or _WORKER_ARGS != (out_dir, weights):
        _init_worker(cfg_dict, out_dir, weights)  # once per Ray worker process
    return _run_task((path, label))


def run_ray(tasks: list[Task], cfg: BuildConfig, out_dir: str | None, weights: str | None, workers: int,
            address: str | None = None) -> Iterator[dict[str, Any]]:
    """Ray tasks (one per input, 1 CPU each). Starts a local Ray instance unless ``address``."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover
        raise SystemExit("the ray engine needs Ray: pip install 'avf-data[distributed]'") from exc
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=max(1, workers), **kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(_ray_task)
        cfg_dict = cfg.to_dict()
        cfg_ref = ray.put(cfg_dict)
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", workers or 1)))
        it = iter(tasks)
        pending: dict = {}
        for path, label in it:
            pending[remote.remote(path, label, cfg_ref, out_dir, weights)] = path
            if len(pending) >= limit:
                break
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                path = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayTaskError,
                        ray.exceptions.OutOfMemoryError) as exc:
                    yield _crash_result(path, f"Ray task failed: {type(exc).__name__}")
                nxt = next(it, None)
                if nxt is not None:
                    pending[remote.remote(nxt[0], nxt[1], cfg_ref, out_dir, weights)] = nxt[0]
    finally:
        if started:
            ray.shutdown()
