"""The driver of ``avf-data build``: inputs -> tasks -> engine -> store -> outputs.

Inputs are found once (:class:`avf_data.inputs.InputPlan`: a few bytes of memory per input),
the pending ones are cut, in order, into tasks of ``min(output.inputs_per_task, ceil(pending /
workers))`` inputs, and an engine (local process pool or Ray actors) curates them, pulling
tasks as workers free up. Each finished task is committed to the build log and its clips are
packed, in input order, into shards of ``output.shard_size`` (:mod:`avf_data.store`). At the
end the outputs are written from the logs. The driver holds counters and a window of tasks in
flight, so its memory does not grow with the corpus.

Resume: rerunning the same command skips the inputs the log records as finished (a task is
finished once its log line is written) and redoes the others; keys derive from the source
path hash + clip index, so they never change.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from .config import PIPELINE_VERSION, BuildConfig
from .engines import WorkerSpec, default_workers, run_jobs
from .inputs import InputPlan, input_id
from .media import MediaError, check_file, path_text
from .pipeline import CurationWorker, Task, cpu_now, rejected_input, task_id
from .stages import registry
from .store.build_store import BuildStore
from .store.examples import Reservoir, reject_row_id, unit_hash
from .store.folder import THUMB_NAME, FolderLock, OutputFolder, claim
from .store.log import DoneSet
from .store.outputs import write_outputs

# --------------------------------------------------------------------------- sync set-up


def resolve_weights(weights: str | None, cfg: BuildConfig) -> str | None:
    """The SyncNet weights to use: ``--syncnet-weights``, else ``sync.weights`` in the config,
    else the ``AVF_SYNCNET_WEIGHTS`` environment variable (see stages.sync.resolve_weights)."""
    from .stages.sync import resolve_weights as resolve

    return resolve(weights, cfg.sync)[0]


def check_weights(weights: str, cfg: BuildConfig) -> None:
    """Load the SyncNet weights once in the driver so a bad path fails fast and clearly
    (instead of every worker failing to start)."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"SyncNet weights: no such file {weights!r}")
    from .stages.sync import build_sync_scorer

    try:
        build_sync_scorer(cfg.sync, weights)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's messages run over many lines
        raise ValueError(f"SyncNet weights {weights!r} cannot be loaded: {type(exc).__name__}: {first}") from None


def check_sync_setup(weights: str | None, cfg: BuildConfig) -> None:
    """Refuse a build that must enforce sync with SyncNet but has no usable weights."""
    if weights:
        check_weights(weights, cfg)
        sync_expert(weights, cfg)  # a sync expert's sidecar, checked before any worker starts
    elif cfg.sync.require_syncnet and cfg.sync.mode != "off":
        raise ValueError(
            "SyncNet is required (--require-syncnet / sync.require_syncnet) but no weights were "
            "given: pass --syncnet-weights syncnet_v2.model, set sync.weights or AVF_SYNCNET_WEIGHTS"
        )


def sync_expert(weights: str | None, cfg: BuildConfig) -> dict[str, Any] | None:
    """Which weights decide sync and by which rule (stats.json ``sync_expert``); None when no
    SyncNet runs. A sync expert's sidecar rule applies per ``sync.calibration``."""
    from .stages.sync_calibration import apply_calibration

    return None if cfg.sync.mode == "off" else apply_calibration(cfg.sync, weights)[1]


# --------------------------------------------------------------------------- tasks

PRUNE_EVERY = 2000  # inputs between clean-ups of the report's candidate pictures


def task_size(pending: int, inputs_per_task: int, workers: int) -> int:
    """Inputs per task: full tasks for big runs, and still one task per worker for small ones."""
    return max(1, min(max(1, inputs_per_task), math.ceil(max(1, pending) / max(1, workers))))


def group_tasks(items: list[tuple[str, Any]], inputs_per_task: int, workers: int = 1) -> list[Task]:
    """Cut ``items`` (path, label), in order, into tasks of :func:`task_size` inputs (the last
    one may be shorter). Deterministic; each task's id is :func:`avf_data.pipeline.task_id` of
    its inputs and its ``seq`` the position of its first input."""
    size = task_size(len(items), inputs_per_task, workers)
    return [
        Task(task_id([input_id(p) for p, _ in items[i : i + size]]), i, items[i : i + size])
        for i in range(0, len(items), size)
    ]


class _TaskSource:
    """The pending inputs as tasks, made as the engine asks for them. Inputs that fail the
    cheap file checks (missing, empty, a FIFO, ...) are committed as rejects right here: no
    worker is needed for them."""

    def __init__(self, plan: InputPlan, size: int, labels: dict[str, Any] | None, cfg: BuildConfig, commit, policy):
        self.plan, self.size, self.labels, self.cfg = plan, size, labels, cfg
        self.commit, self.policy = commit, policy
        self.tasks = 0
        self.early = 0

    def __iter__(self) -> Iterator[Task]:
        group: list[tuple[str, Any]] = []
        seq = 0  # position of the next input in the run: tasks and early rejects take their places
        for path in self.plan.pending():
            try:
                check_file(path)
            except MediaError as exc:
                if group:  # a task covers consecutive positions: the group ends here
                    yield self._task(group, seq)
                    seq, group = seq + len(group), []
                rec = rejected_input(path, self.cfg, exc.code, str(exc))
                self.early += 1
                self.commit(
                    {"task_id": task_id([rec["input_id"]]), "seq": seq, "n": 1, "segment": None, "inputs": [rec]}
                )
                seq += 1
                continue
            group.append((path, (self.labels or {}).get(path)))
            if len(group) == self.size:
                yield self._task(group, seq)
                seq, group = seq + len(group), []
        if group:
            yield self._task(group, seq)

    def _task(self, group: list[tuple[str, Any]], seq: int) -> Task:
        self.tasks += 1
        return Task(task_id([input_id(p) for p, _ in group]), seq, group, self.policy())


# --------------------------------------------------------------------------- build


def build(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    cfg: BuildConfig | None = None,
    *,
    workers: int | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    weights: str | None = None,
    labels: dict[str, dict[str, Any]] | None = None,
    preface: list[dict[str, Any]] | None = None,
    progress: bool = True,
    warn: Any = None,
) -> dict[str, Any]:
    """Curate ``inputs`` into ``out_dir``; returns the stats dict. Resumes an interrupted run.

    ``labels`` (labelled import) maps an input path to the label fields of its samples (the
    inputs are then taken as given, not searched). ``preface``: records to log before the run
    unless logged already (the import's bad CSV rows, as a pseudo-input). ``warn(line)``
    receives the start-of-run warnings (the CLI prints them).
    """
    cfg = cfg or BuildConfig()
    weights = resolve_weights(weights, cfg)
    check_sync_setup(weights, cfg)
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be 0 (inline) or more, got {workers}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    folder = claim(out_dir, "import" if labels is not None else "build")
    with FolderLock(folder):
        return _build_locked(
            inputs, folder, cfg, workers, engine, ray_address, weights, labels, preface or [], progress, warn
        )


def open_store(folder: OutputFolder, cfg: BuildConfig) -> tuple[BuildStore, Any]:
    """The folder's build store, opened (resumed, repaired); returns it and what was repaired."""
    store = BuildStore(folder, cfg.output.shard_bytes, cfg.output.max_clips_per_shard)
    return store, store.open()


def _build_locked(
    inputs: list[str | os.PathLike],
    folder: OutputFolder,
    cfg: BuildConfig,
    workers: int | None,
    engine: str,
    ray_address: str | None,
    weights: str | None,
    labels: dict[str, dict[str, Any]] | None,
    preface: list[dict[str, Any]],
    progress: bool,
    warn: Any,
) -> dict[str, Any]:
    import yaml

    store, recovery = open_store(folder, cfg)
    folder.config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    done = _commit_preface(store, preface)
    plan = InputPlan(inputs, done, expand=labels is None)
    try:
        _check_start(plan, cfg, weights, warn)
        if workers is None:  # a joined Ray cluster: one actor per CPU of the cluster
            workers = 0 if engine == "ray" and ray_address else default_workers()
        size = task_size(plan.pending_count, cfg.output.inputs_per_task, workers)
        run = _Run(store, cfg, plan.pending_count, progress)
        source = _TaskSource(plan, size, labels, cfg, run.commit, run.thumb_policy)
        spec = WorkerSpec(CurationWorker, (cfg.to_dict(), str(folder.root), weights), preload="avf_data._preload")
        policy = _CrashPolicy(folder, cfg)
        for result in run_jobs(source, spec, workers, engine, ray_address, policy.split, policy.give_up):
            run.commit(result)
        run.close()
        sealed = store.finish()
    finally:
        plan.close()
        store.close()
    run_info = {
        "engine": engine,
        "workers": workers,
        "inputs_given": plan.given,
        "inputs_processed": run.inputs,
        "inputs_skipped_resume": plan.already_done,
        "tasks": source.tasks,
        "inputs_per_task": size if source.tasks else 0,
        "shards_sealed": len(sealed),
        "orphan_shards_removed": len(recovery.shard_files_removed) + len(recovery.segments_removed),
        "tasks_packed_from_earlier_run": recovery.backlog,
        **run.figures(workers),
        "syncnet_weights": path_text(weights) if weights else None,
        "inputs_skipped": plan.notes,
        "files_skipped": {k: n for k, n in plan.skipped.items() if n},
    }
    return write_outputs(
        folder,
        run_info,
        extra={"pipeline_version": PIPELINE_VERSION, "sync_expert": sync_expert(weights, cfg)},
        report_examples=cfg.output.report_examples,
        thumbnails=cfg.output.thumbnails,
        progress=progress,
        stage_order=["decode", *registry.names()],
    )


def _commit_preface(store: BuildStore, preface: list[dict[str, Any]]) -> DoneSet:
    """Log pseudo-inputs (an import's bad CSV rows) once; returns the ids done so far."""
    done = store.done()
    for rec in preface:
        if not done.contains(rec["input_id"]):
            store.commit({"task_id": rec["input_id"], "seq": None, "segment": None, "inputs": [rec]})
    return done


def _check_start(plan: InputPlan, cfg: BuildConfig, weights: str | None, warn: Any) -> None:
    """Refuse a build without inputs; say so when sync will be measured but not enforced, or
    enforced by an expert that its own sidecar calls weak."""
    if plan.given == 0:
        raise ValueError("no inputs to curate" + (": " + "; ".join(plan.notes[:3]) if plan.notes else ""))
    if warn is not None and not weights and cfg.sync.mode == "enforce" and not cfg.sync.enforce_fallback:
        warn(
            "no SyncNet weights: sync is measured with the weight-free fallback and NOT enforced "
            "(see --syncnet-weights, --require-syncnet)"
        )
    expert = sync_expert(weights, cfg) if weights else None
    if warn is not None and expert and expert.get("warning"):
        warn(expert["warning"])


class _CrashPolicy:
    """What the engine does with a task that keeps crashing its worker: split it into
    single-input tasks (each a task of its own), and reject an input that still crashes alone
    (stage ``error``, code ``error.crash``), so the other inputs of a task are never lost. The
    crashed task's segment is deleted either way: it will never be committed."""

    def __init__(self, folder: OutputFolder, cfg: BuildConfig) -> None:
        self.folder, self.cfg = folder, cfg

    def split(self, task: Task) -> list[Task]:
        self.folder.segment(task.task_id).unlink(missing_ok=True)
        if len(task.items) < 2:
            return []
        return [
            Task(task_id([input_id(item[0])]), task.seq + i, [item], task.thumbs) for i, item in enumerate(task.items)
        ]

    def give_up(self, task: Task, reason: str) -> dict[str, Any]:
        self.folder.segment(task.task_id).unlink(missing_ok=True)
        recs = [rejected_input(path, self.cfg, "error.crash", reason) for path, _ in task.items]
        return {"task_id": task.task_id, "seq": task.seq, "n": len(task.items), "segment": None, "inputs": recs}


class _Run:
    """One run's commits: into the store, onto the progress bar, into the running sample of
    reject rows that tells workers which rows still need a picture."""

    def __init__(self, store: BuildStore, cfg: BuildConfig, total: int, progress: bool) -> None:
        from tqdm import tqdm

        self.store = store
        self.t0 = time.perf_counter()
        self.frames = self.clips = self.inputs = 0
        self.busy = self.cpu = 0.0
        self.by_stage: Counter[str] = Counter()
        self.workers_cpu: dict[int, float] = {}  # pid -> CPU so far of each worker process
        self.preload_cpu: dict[int, float] = {}  # pid -> CPU a fork server spent loading for its workers
        self.examples = Reservoir(cfg.output.report_examples)
        self.cap = cfg.output.report_examples + 8
        self._pruned_at = 0
        self.bar = tqdm(
            total=total, unit="input", desc="curating", file=sys.stderr, disable=not progress, dynamic_ncols=True
        )

    def figures(self, workers: int) -> dict[str, Any]:
        """Throughput of the run, by wall clock, by busy worker time and by CPU time."""
        wall = time.perf_counter() - self.t0
        frames, busy, cpu = self.frames, self.busy, self.cpu
        return {
            "wall_seconds": round(wall, 3),
            "frames_processed": frames,
            "frames_per_second": round(frames / wall, 2) if wall > 0 else 0.0,
            "frames_per_second_per_core": round(frames / wall / max(1, workers), 2) if wall > 0 else 0.0,
            "clips_per_second": round(self.clips / wall, 3) if wall > 0 else 0.0,
            # throughput of one busy worker (excludes pool start-up and idle time)
            "frames_per_worker_second": round(frames / busy, 2) if busy > 0 else 0.0,
            # the same per CPU-second of the workers (comparable across machines and loads)
            "frames_per_cpu_second": round(frames / cpu, 2) if cpu > 0 else 0.0,
            "cpu_seconds_all_processes": self.cpu_report(),
        }

    def thumb_policy(self) -> dict[str, Any]:
        return {
            "threshold": self.examples.threshold(),
            "codes": self.examples.category_thresholds(),
            "cap": self.cap,
        }

    def commit(self, result: dict[str, Any]) -> None:
        worker = result.pop("worker", None)
        if worker and worker["pid"] != os.getpid():  # inline work is the driver's own CPU
            self.workers_cpu[worker["pid"]] = max(self.workers_cpu.get(worker["pid"], 0.0), worker["cpu"])
            if worker.get("preload"):
                self.preload_cpu[worker["preload"][0]] = worker["preload"][1]
        self.store.commit(result)
        for rec in result["inputs"]:
            self.inputs += 1
            self.frames += rec.get("frames", 0)
            self.busy += rec.get("proc_seconds", 0.0)
            self.cpu += rec.get("cpu_seconds", 0.0)
            self.clips += len(rec["manifest"])
            for r in rec["rejects"]:
                self.by_stage[r["stage"]] += 1
                self.examples.offer(unit_hash(reject_row_id(r)), None, r.get("code"))
        el = max(time.perf_counter() - self.t0, 1e-6)
        self.bar.set_postfix_str(
            f"clips={self.clips} {self.clips / el:.2f} clips/s {self.frames / el:.0f} frames/s "
            + " ".join(f"rej:{k}={v}" for k, v in sorted(self.by_stage.items())),
            refresh=False,
        )
        self.bar.update(len(result["inputs"]))
        if self.inputs - self._pruned_at >= PRUNE_EVERY:
            self.prune_thumbs()

    def prune_thumbs(self) -> None:
        """Delete reject pictures that can no longer make the report's sample (workers made them
        when they still could), so the folder holds a few dozen pictures, not one per reject."""
        self._pruned_at = self.inputs
        folder = self.store.folder.thumbs
        if not folder.is_dir():
            return
        limit = self.examples.threshold()
        firsts = set(self.examples.category_thresholds().values())
        for p in folder.iterdir():
            if p.name.startswith("r") and THUMB_NAME.match(p.name):
                h = unit_hash(p.stem)
                if h >= limit and h not in firsts:
                    p.unlink(missing_ok=True)

    def close(self) -> None:
        self.bar.close()

    def cpu_report(self) -> dict[str, float]:
        """CPU seconds of every process of the run: what ``time`` of the build command does not
        see (the workers are not its children), next to what the stages themselves used."""
        driver = cpu_now()
        workers, start_up = sum(self.workers_cpu.values()), sum(self.preload_cpu.values())
        total = driver + workers + start_up
        return {
            "total": round(total, 3),
            "driver": round(driver, 3),
            "worker_start_up": round(start_up, 3),
            "workers": round(workers, 3),
            "inputs": round(self.cpu, 3),
            "frames_per_cpu_second_all_processes": round(self.frames / total, 2) if total > 0 else 0.0,
        }
