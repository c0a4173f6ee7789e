"""Where work runs: in this process, on a local process pool, or on a pool of Ray actors.

One engine layer for the build and the sync pass. A *worker* is a class built once per worker
process (it loads its models in ``__init__``) and called once per *job*; jobs are pulled from
the caller's iterator as workers free up (a bounded window in flight), so no list of a corpus's
jobs is ever held, and results come back as they finish. The caller alone writes its logs, so
engines only differ in where the work runs.

Crashes (a worker process killed by a segfault or the OOM killer) follow the caller's policy:
the job is retried; a job caught in three crashes is rerun alone (the local pool charges a
crash to every job in flight, so no innocent bystander is blamed), then ``split(job)`` gives
smaller jobs to try one by one, and a job that cannot be split is handed to ``give_up(job,
reason)``, which returns its result (the build: a reject row per input) or raises (the sync
pass: the run stops, naming the shard).

Workers of the local pool fork from a server that imported the caller's ``preload`` module
(libraries, detectors) once; Ray actors build their worker when they start. Both watch the
driver and exit when it dies.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

MAX_TRIES = 3
WORKER_MEMORY_BYTES = 1_500_000_000  # peak RSS budget of one curation worker (tools/bench/real.py)
RAY_CONNECT_TIMEOUT = 10.0


@dataclass
class WorkerSpec:
    """How to make a worker: ``cls(*args)`` once per process, then ``worker(job)`` per job."""

    cls: type
    args: tuple = ()
    preload: str | None = None  # module the local pool's fork server imports before forking
    num_gpus: float = 0  # GPUs per Ray actor (0: one CPU each)


def _no_split(job: Any) -> list[Any]:
    return []


def _raise(job: Any, reason: str) -> Any:
    raise RuntimeError(f"{reason} ({job})")


# --------------------------------------------------------------------------- worker processes

_WORKER: Any = None


def _watch_driver(pid: int) -> None:
    """Exit when the driver is gone (kill -9): pool workers would otherwise wait forever."""
    import time

    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):  # gone, or the pid reused by another user
            os._exit(0)


def _start_worker(spec: WorkerSpec, driver_pid: int | None = None) -> None:
    global _WORKER
    os.environ["OMP_NUM_THREADS"] = "1"
    if driver_pid is not None and driver_pid != os.getpid():
        threading.Thread(target=_watch_driver, args=(driver_pid,), daemon=True, name="avf-watch-driver").start()
    _WORKER = spec.cls(*spec.args)


def _call(job: Any) -> Any:
    return _WORKER(job)


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


# --------------------------------------------------------------------------- local


def run_local(
    jobs: Iterable[Any],
    spec: WorkerSpec,
    workers: int,
    split: Callable[[Any], list[Any]] = _no_split,
    give_up: Callable[[Any, str], Any] = _raise,
) -> Iterator[Any]:
    """A process pool of ``workers``; ``workers=0`` runs the jobs in this process."""
    if workers <= 0:
        _start_worker(spec)
        for job in jobs:
            yield _call(job)
        return
    # forkserver: workers fork from a clean single-threaded server that imported the heavy
    # libraries once (the driver may run threads: tqdm, Ray, torch); spawn where unsupported
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        if spec.preload:
            ctx.set_forkserver_preload([spec.preload])
    else:  # pragma: no cover
        ctx = mp.get_context("spawn")
    fresh = iter(jobs)
    retry: deque[Any] = deque()  # crashed alongside others: run side by side again
    alone: deque[Any] = deque()  # run one at a time, so that a crash is surely theirs
    tries: dict[int, int] = {}  # id(job) -> crashes it was caught in

    def next_shared() -> Any:
        return retry.popleft() if retry else next(fresh, None)

    while True:
        first = next_shared()
        solo = first is None
        if first is None:
            if not alone:
                return
            first = alone.popleft()
        pool = ProcessPoolExecutor(
            max_workers=1 if solo else workers, mp_context=ctx, initializer=_start_worker, initargs=(spec, os.getpid())
        )
        with pool:
            crashed = yield from _pool_phase(
                pool, first, None if solo else next_shared, 2 * workers, alone if solo else retry
            )
        # a worker died: every job in flight failed with it; after three crashes a job runs
        # alone, and a crash while alone is its own: split it, or give it up
        for job in crashed:
            tries[id(job)] = tries.get(id(job), 0) + 1
            if tries[id(job)] < MAX_TRIES:
                (alone if solo else retry).append(job)
            elif len(crashed) > 1:
                alone.append(job)
            elif parts := split(job):
                alone.extend(parts)
            else:
                yield give_up(job, f"worker process crashed while running it ({MAX_TRIES} tries)")


def _pool_phase(pool: ProcessPoolExecutor, first: Any, more, window: int, requeue: deque):
    """Run ``first`` and, while ``more`` gives jobs, up to ``window`` at a time on ``pool``;
    yields results as they finish. Returns the jobs caught in a crash of the pool."""
    pending: dict = {}
    crashed: list[Any] = []

    def submit(job: Any) -> bool:
        try:
            pending[pool.submit(_call, job)] = job
            return True
        except BrokenProcessPool:  # the pool broke meanwhile: the job waits for the next one
            requeue.appendleft(job)
            return False

    submit(first)
    while more is not None and len(pending) < window:
        job = more()
        if job is None or not submit(job):
            break
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for fut in done:
            job = pending.pop(fut)
            try:
                result = fut.result()
            except BrokenProcessPool:
                crashed.append(job)
                continue
            yield result
            if more is not None and not crashed and (nxt := more()) is not None:
                submit(nxt)
    return crashed


# --------------------------------------------------------------------------- Ray


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


class _RayWorker:
    """A Ray actor around one worker (built when the actor starts)."""

    def __init__(self, spec: WorkerSpec) -> None:
        _start_worker(spec)

    def run(self, job: Any) -> Any:
        return _call(job)


def _ray_init(workers: int, address: str | None):
    """Start a local Ray (``workers`` CPUs) or join ``address``; errors are one line."""
    # Ray (>= 2.43) re-runs workers through `uv run` when the driver was started by it, which
    # builds a second environment per session: workers on this machine use this interpreter
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError as exc:  # pragma: no cover
        raise ValueError("the ray engine needs Ray: pip install 'avf-data[distributed]'") from exc
    if ray.is_initialized():
        return ray, False
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
    return ray, True


def run_ray(
    jobs: Iterable[Any],
    spec: WorkerSpec,
    workers: int,
    address: str | None = None,
    split: Callable[[Any], list[Any]] = _no_split,
    give_up: Callable[[Any, str], Any] = _raise,
) -> Iterator[Any]:
    """A pool of actors, each holding one worker: ``workers`` of them (on a joined cluster
    without ``workers``: one per CPU, or per GPU when ``spec.num_gpus``). A job that fails
    after Ray restarted its crashed actor and retried it once is split or given up."""
    ray, started = _ray_init(workers, address)
    try:
        resource = "GPU" if spec.num_gpus else "CPU"
        available = int(ray.cluster_resources().get(resource, 0))
        if spec.num_gpus and available < 1:
            raise ValueError("the Ray cluster has no GPU for these workers (asked for one per worker)")
        n = max(1, workers or available)
        actor_cls = ray.remote(num_cpus=1, num_gpus=spec.num_gpus, max_restarts=-1, max_task_retries=1)(_RayWorker)
        spec_ref = ray.put(spec)
        free = [actor_cls.remote(spec_ref) for _ in range(n)]
        fresh = iter(jobs)
        retry: deque[Any] = deque()
        pending: dict = {}
        while True:
            while free and (job := retry.popleft() if retry else next(fresh, None)) is not None:
                actor = free.pop()
                pending[actor.run.remote(job)] = (job, actor)
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job, actor = pending.pop(ref)
                free.append(actor)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if parts := split(job):
                        retry.extend(parts)
                    else:
                        first = (str(exc).strip().splitlines() or [""])[0]
                        yield give_up(job, f"failed on Ray ({type(exc).__name__}: {first})")
    finally:
        if started:
            ray.shutdown()


def run_jobs(
    jobs: Iterable[Any],
    spec: WorkerSpec,
    workers: int,
    engine: str = "local",
    address: str | None = None,
    split: Callable[[Any], list[Any]] = _no_split,
    give_up: Callable[[Any, str], Any] = _raise,
) -> Iterator[Any]:
    """Run ``jobs`` on ``engine`` (``local`` or ``ray``); results as they finish."""
    if engine == "local":
        return run_local(jobs, spec, workers, split, give_up)
    if engine == "ray":
        return run_ray(jobs, spec, workers, address, split, give_up)
    raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
