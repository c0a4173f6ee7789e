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
(libraries, detectors) once; Ray actors build their worker when they start. Pool workers
exit within a second of the driver's death, even a ``kill -9`` on a loaded machine
(:mod:`avf_data.lifetime`); Ray ends its actors with their driver's job.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

MAX_TRIES = 3
WORKER_MEMORY_BYTES = 1_500_000_000  # peak RSS budget of one curation worker (tools/bench/real.py)
RAY_CONNECT_TIMEOUT = 4.0  # per step of check_ray_address: the whole check well under 10 s


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


def _start_worker(spec: WorkerSpec, driver_pid: int | None = None) -> None:
    """Build this process's worker; a pool worker first ties its life to the driver's
    (:func:`avf_data.lifetime.exit_with`: killed with its fork server, or by a pidfd watch on
    the driver), so that a ``kill -9`` of the driver leaves no worker behind."""
    global _WORKER
    os.environ["OMP_NUM_THREADS"] = "1"
    if driver_pid is not None and driver_pid != os.getpid():
        from .lifetime import exit_with

        exit_with(driver_pid)
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
        # the server exits at once (not after Python's shutdown) when the driver is gone
        ctx.set_forkserver_preload([*filter(None, [spec.preload]), "avf_data.fork_server"])
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
    """Fail fast, in one line, when no Ray cluster answers at ``address``. Why: ``ray.init``
    retries for 20 s to minutes, a warning line each time, at a closed port, a host that drops
    packets or a port where something else listens. A TCP connect, then (for a GCS
    ``HOST:PORT``) one gRPC call that only a Ray GCS answers, each within ``timeout`` s."""
    if address in ("auto", "local") or address.startswith("anyscale://"):
        return
    client = address.startswith("ray://")
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if client and not port.isdigit():  # ray://HOST: the client server's default port
        host, port, target = target, "10001", f"{target}:10001"
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r}: expected HOST:PORT, 'auto' or ray://HOST:PORT")
    _tcp_answers(address, host.strip("[]"), int(port), timeout)
    if not client:
        _gcs_answers(address, target, timeout)


def _tcp_answers(address: str, host: str, port: int, timeout: float) -> None:
    """Something accepts TCP connections at ``host:port`` within ``timeout`` s (else one line)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        why = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else exc.strerror
        raise ValueError(
            f"--ray-address {address!r}: no Ray cluster answers there ({why or type(exc).__name__}); "
            "is `ray start --head` running?"
        ) from None


def _gcs_answers(address: str, target: str, timeout: float) -> None:
    """A Ray GCS answers ``GetClusterId`` at ``target`` (an empty request, no Ray import);
    anything else that listens there (another server, a proxy) fails in one line, and so does
    a cluster that wants a token this process will not send (``ray.init`` would retry for 20 s)."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - Ray brings grpcio
        return
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
    try:
        call(b"", timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            _check_ray_token(address, call, timeout)
            return
        name = code.name if code is not None else type(exc).__name__
        raise ValueError(
            f"--ray-address {address!r}: something listens there but no Ray cluster answers ({name}); "
            "is this the head node's GCS port (6379 by default) and is `ray start --head` running?"
        ) from None
    finally:
        channel.close()


def _check_ray_token(address: str, call: Any, timeout: float) -> None:
    """The cluster at ``address`` wants a token: fail in one line unless this process sends
    one it accepts (Ray sends its token only with ``RAY_AUTH_MODE=token``)."""
    import grpc

    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        raise ValueError(
            f"--ray-address {address!r}: the Ray cluster there wants an authentication token; set "
            "RAY_AUTH_MODE=token (with its token in RAY_AUTH_TOKEN or ~/.ray/auth_token) and run again"
        )
    try:
        from ray._raylet import AuthenticationTokenLoader

        headers = AuthenticationTokenLoader.instance().get_token_for_http_header()
    except Exception:  # noqa: BLE001 - this Ray cannot say: ray.init will
        return
    try:
        call(b"", timeout=timeout, metadata=tuple(headers.items()))
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise ValueError(
                f"--ray-address {address!r}: the Ray cluster there rejects this machine's token "
                "(RAY_AUTH_TOKEN or ~/.ray/auth_token); use the head node's (`ray get-auth-token`)"
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
                        cause = getattr(exc, "cause", None) or exc  # the worker's own exception
                        first = (str(cause).strip().splitlines() or [""])[0]
                        yield give_up(job, f"failed on Ray ({type(cause).__name__}: {first})")
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
