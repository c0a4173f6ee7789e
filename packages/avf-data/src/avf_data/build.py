"""The driver of ``avf-data build``: input discovery, task grouping, resume, engines, outputs.

Output folder layout::

    DIR/shards/<task-id>-000000.tar    WebDataset shards, shared by the inputs of one task
    DIR/manifest.jsonl                 one row per accepted clip
    DIR/rejects.jsonl                  one row per rejected input / segment / clip / gap
    DIR/stats.json                     per-stage counts and seconds, throughput, sync scorer
    DIR/report.md, DIR/contact_sheet.png
    DIR/done.jsonl                     resume log: one line per finished task (its shards and,
                                       per input, its rows)
    DIR/thumbs/                        small JPEGs used by the report
    DIR/config.yaml                    the configuration of the last run

Tasks: the pending inputs, in order, are cut into consecutive groups of
``min(output.inputs_per_task, ceil(pending / workers))`` inputs (:func:`group_tasks`). A
task's clips go into ``shards/<task-id>-NNNNNN.tar`` where the task id hashes the group's
sorted input ids: the same pending list gives the same tasks and shard names, and a rerun
that groups the remaining inputs differently gets new names, never a committed one.

Resume: a task is finished once its line is in ``done.jsonl``; that line is appended (and
fsynced, in one write) only after the worker renamed all the task's shards into place. A
rerun deletes ``*.tmp`` leftovers and every shard the done-log does not list (a task whose
shards were renamed but whose line was never written: its inputs are redone, so keeping its
shards would duplicate keys), skips finished inputs and redoes the others; keys derive from
the source path hash + clip index, so they never change.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .config import PIPELINE_VERSION, BuildConfig
from .engines import Item, Task, default_workers, run_local, run_ray
from .media import MediaError, check_file, path_text
from .pipeline import STAGES, input_id, rejected_input, task_id

VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".wmv", ".3gp"}
LIST_EXTS = {".txt", ".lst", ".list"}


def resolve_inputs(items: list[str | os.PathLike], notes: list[str] | None = None) -> list[str]:
    """Expand INPUT arguments into absolute input paths: video files, folders (recursive, by
    extension) and text files listing one path per line (relative paths are relative to the
    list file; ``#`` comments). The same file reached twice (a symlink, a folder given twice)
    is kept once. ``notes`` collects what was skipped and why (unreadable subfolders, folders
    without videos, duplicates), for the report."""
    out: list[str] = []
    seen: dict[str, str] = {}
    notes = notes if notes is not None else []

    def add(p: str) -> None:
        path = os.path.abspath(p)
        key = os.path.realpath(path)
        if key in seen:
            if seen[key] != path:
                notes.append(f"{path_text(path)}: same file as {path_text(seen[key])} (kept once)")
            return
        seen[key] = path
        out.append(path)

    for item in items:
        p = os.fspath(item)
        if os.path.isdir(p):
            found = []

            def unreadable(err: OSError, top: str = p) -> None:
                notes.append(f"{path_text(err.filename or top)}: folder skipped ({err.strerror or err})")

            for root, dirs, files in os.walk(p, onerror=unreadable):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in files:
                    if Path(name).suffix.lower() in VIDEO_EXTS and not name.startswith("."):
                        found.append(os.path.join(root, name))
            if not found:
                what = "a folder named like a video" if Path(p).suffix.lower() in VIDEO_EXTS else "a folder"
                notes.append(f"{path_text(p)}: {what} with no video files ({', '.join(sorted(VIDEO_EXTS))})")
            for f in sorted(found):
                add(f)
        elif Path(p).suffix.lower() in LIST_EXTS and os.path.isfile(p):
            base = os.path.dirname(os.path.abspath(p))
            with open(p, "rb") as fh:
                for raw in fh.read().splitlines():
                    line = os.fsdecode(raw.strip())
                    if not line or line.startswith("#"):
                        continue
                    add(line if os.path.isabs(line) else os.path.join(base, line))
        else:
            add(p)  # a missing or unreadable file still becomes a reject row
    return out


# --------------------------------------------------------------------------- done-log


def read_log(out: Path) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Finished inputs by input id, and the committed shards (paths relative to ``out``).

    A line is a task (``{"task_id", "shards", "inputs": [...]}``) or, as written by earlier
    versions and by the importer's pseudo-input, one input. A torn last line (crash while
    appending) is ignored: that task is not finished and its shards are not committed.
    """
    done: dict[str, dict[str, Any]] = {}
    shards: set[str] = set()
    path = out / "done.jsonl"
    if not path.exists():
        return done, shards
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            if "task_id" in rec and isinstance(rec.get("inputs"), list):
                shards.update(rec.get("shards", []))
                for r in rec["inputs"]:
                    done[r["input_id"]] = r
                    shards.update(r.get("shards", []))
            elif "input_id" in rec:
                done[rec["input_id"]] = rec
                shards.update(rec.get("shards", []))
    return done, shards


def read_done(out: Path) -> dict[str, dict[str, Any]]:
    """Finished inputs by input id (see :func:`read_log`)."""
    return read_log(out)[0]


def remove_orphans(out: Path, committed: set[str] | None = None) -> list[str]:
    """Delete shards that no done-log line lists: those of a task whose shards were renamed
    but whose line was never written (the driver died in between). Its inputs are pending
    again, so keeping them would duplicate keys. Returns the removed paths (relative)."""
    if committed is None:
        committed = read_log(out)[1]
    from .outdir import own_indexes, own_shards

    removed = []
    for p in own_shards(out):
        rel = p.relative_to(out).as_posix()
        if rel not in committed:
            p.unlink(missing_ok=True)
            removed.append(rel)
    for p in own_indexes(out):  # an index whose shard is gone (removed above, or never renamed)
        if not p.with_name(p.name[: -len(".idx.json")] + ".tar").exists():
            p.unlink(missing_ok=True)
    return removed


def _repair_done_log(out: Path) -> None:
    """Drop a torn trailing line so that later appends start on a fresh line."""
    path = out / "done.jsonl"
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)


def _append_done(fh, rec: dict[str, Any]) -> None:
    fh.write(json.dumps(rec, ensure_ascii=True) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def _clean_tmp(out: Path) -> int:
    from .outdir import own_tmp_files

    n = 0
    for p in own_tmp_files(out):
        p.unlink(missing_ok=True)
        n += 1
    return n


def group_tasks(items: list[Item], inputs_per_task: int, workers: int = 1) -> list[Task]:
    """Cut the pending inputs, in order, into tasks of ``min(inputs_per_task,
    ceil(len(items) / workers))`` inputs (the last one may be shorter): big runs get full
    tasks, small runs still give every worker one. Deterministic; each task's id (and shard
    prefix) is :func:`avf_data.pipeline.task_id` of its inputs."""
    from .pipeline import task_id

    if not items:
        return []
    size = max(1, min(max(1, inputs_per_task), math.ceil(len(items) / max(1, workers))))
    groups = [items[i : i + size] for i in range(0, len(items), size)]
    return [(task_id([input_id(p) for p, _ in g]), g) for g in groups]


# --------------------------------------------------------------------------- outputs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over finished inputs (the part of stats.json that resumes add up)."""
    stages = {s: {"in": 0, "out": 0, "seconds_in": 0.0, "seconds_out": 0.0} for s in STAGES}
    codes: dict[str, dict[str, float]] = {}
    reject_seconds: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    timing: Counter[str] = Counter()
    enforced: set[bool] = set()
    tot = {
        "inputs": 0,
        "inputs_rejected": 0,
        "inputs_vfr": 0,
        "clips": 0,
        "frames_in": 0,
        "seconds_in": 0.0,
        "seconds_accepted": 0.0,
        "seconds_rejected": 0.0,
        "processing_seconds": 0.0,
        "cpu_seconds": 0.0,
        "peak_worker_rss_mb": 0.0,
    }

    def add_code(r: dict[str, Any]) -> None:
        c = codes.setdefault(reject_code(r), {"count": 0, "seconds": 0.0})
        c["count"] += 1
        c["seconds"] = round(c["seconds"] + r.get("seconds", 0.0), 3)

    for rec in records:
        if rec["input_id"].startswith("csvrows_"):  # bad CSV rows of a labelled import
            for r in rec["rejects"]:
                add_code(r)
            continue
        tot["inputs"] += 1
        tot["inputs_vfr"] += bool(rec.get("source_vfr"))
        tot["frames_in"] += rec.get("frames", 0)
        tot["seconds_in"] += rec.get("seconds", 0.0)
        tot["processing_seconds"] += rec.get("proc_seconds", 0.0)
        tot["cpu_seconds"] += rec.get("cpu_seconds", 0.0)
        tot["peak_worker_rss_mb"] = max(tot["peak_worker_rss_mb"], rec.get("peak_rss_mb", 0.0))
        tot["clips"] += len(rec["manifest"])
        tot["seconds_accepted"] += sum(r["seconds"] for r in rec["manifest"])
        tot["seconds_rejected"] += sum(r["seconds"] for r in rec["rejects"])
        if (
            any(r["stage"] in ("decode", "error") and r.get("start", 0.0) == 0.0 for r in rec["rejects"])
            and not rec["manifest"]
        ):
            tot["inputs_rejected"] += 1
        if "sync_enforced" in rec:
            enforced.add(bool(rec["sync_enforced"]))
        for name, d in rec.get("stages", {}).items():
            agg = stages.setdefault(name, {"in": 0, "out": 0, "seconds_in": 0.0, "seconds_out": 0.0})
            for k in agg:
                agg[k] += d.get(k, 0)
        for r in rec["rejects"]:
            add_code(r)
            reject_seconds[r["stage"]] += r["seconds"]
        for m in rec.get("sync_methods", []):
            methods[m] += 1
        for k, v in rec.get("timing", {}).items():
            timing[k] += v
    for d in stages.values():
        d["seconds_in"] = round(d["seconds_in"], 3)
        d["seconds_out"] = round(d["seconds_out"], 3)
    for k in ("seconds_in", "seconds_accepted", "seconds_rejected", "processing_seconds", "cpu_seconds"):
        tot[k] = round(tot[k], 3)
    by_code = dict(sorted(codes.items(), key=lambda kv: (-kv[1]["seconds"], kv[0])))
    return {
        **tot,
        "stages": stages,
        "rejects_by_code": by_code,
        "rejected_seconds_by_stage": {k: round(v, 3) for k, v in reject_seconds.items()},
        "sync_methods": dict(methods),
        "sync_enforced": (enforced == {True}) if enforced else None,
        "stage_cpu_seconds": {k: round(v, 3) for k, v in timing.items()},
    }


def reject_code(row: dict[str, Any]) -> str:
    """A reject row's reason code (rows of older builds have none: ``<stage>.other``)."""
    return row.get("code") or f"{row.get('stage', '?')}.other"


def stage_warnings(stats: dict[str, Any], threshold: float = 0.5) -> list[str]:
    """One line per stage that rejected more than ``threshold`` of the seconds it was given:
    a default that throws away most of a corpus deserves a look before anyone trains on it."""
    out = []
    for name, d in stats["stages"].items():
        s_in = d.get("seconds_in", 0.0)
        if s_in > 0 and (s_in - d.get("seconds_out", 0.0)) / s_in > threshold:
            codes = [
                c
                for c in stats["rejects_by_code"]
                if c.startswith(name + ".") or (name == "decode" and c.startswith("error."))
            ][:3]
            out.append(
                f"stage '{name}' rejected {(s_in - d['seconds_out']) / s_in:.0%} of its "
                f"{s_in:.1f} s ({', '.join(codes) or 'see rejects.jsonl'})"
            )
    return out


def write_outputs(out: Path, cfg: BuildConfig, run_info: dict[str, Any]) -> dict[str, Any]:
    """(Re)generate manifest.jsonl, rejects.jsonl, stats.json and the report from done.jsonl."""
    records = sorted(read_done(out).values(), key=lambda r: (r["source"], r["input_id"]))
    manifest = [row for rec in records for row in rec["manifest"]]
    rejects = [row for rec in records for row in rec["rejects"]]
    _write_atomic(out / "manifest.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in manifest))
    _write_atomic(out / "rejects.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    stats = aggregate(records)
    methods = list(stats["sync_methods"])
    stats["sync_scorer"] = (methods[0] if len(methods) == 1 else ", ".join(methods)) if methods else "not run"
    stats["pipeline_version"] = PIPELINE_VERSION
    stats["warnings"] = stage_warnings(stats)
    stats["run"] = run_info
    _write_atomic(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    from .report import write_report

    write_report(out, stats, manifest, rejects, cfg)
    return stats


# --------------------------------------------------------------------------- build


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
    elif cfg.sync.require_syncnet and cfg.sync.mode != "off":
        raise ValueError(
            "SyncNet is required (--require-syncnet / sync.require_syncnet) but no weights were "
            "given: pass --syncnet-weights syncnet_v2.model, set sync.weights or AVF_SYNCNET_WEIGHTS"
        )


def sync_banner(stats: dict[str, Any]) -> str | None:
    """The warning every output of a build without enforced sync carries."""
    if stats.get("sync_enforced") is not False:
        return None
    return (
        "sync NOT enforced: no SyncNet weights, so audio-visual sync was measured with the weight-free "
        "fallback and nothing was rejected for it (pass --syncnet-weights, or run `avf-data sync` later)"
    )


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
    progress: bool = True,
    warn: Any = None,
) -> dict[str, Any]:
    """Curate ``inputs`` into ``out_dir``; returns the stats dict. Resumes an interrupted run.

    ``labels`` (labelled import) maps an input path to the label fields of its samples.
    ``warn(line)`` receives the start-of-run warnings (the CLI prints them).
    """

    from .outdir import BuildLock, claim

    cfg = cfg or BuildConfig()
    weights = resolve_weights(weights, cfg)
    check_sync_setup(weights, cfg)
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be 0 (inline) or more, got {workers}")
    out = claim(out_dir, "import" if labels is not None else "build")
    with BuildLock(out):
        return _build_locked(
            inputs,
            out,
            cfg,
            workers=workers,
            engine=engine,
            ray_address=ray_address,
            weights=weights,
            labels=labels,
            progress=progress,
            warn=warn,
        )


def _build_locked(
    inputs: list[str | os.PathLike],
    out: Path,
    cfg: BuildConfig,
    *,
    workers: int | None,
    engine: str,
    ray_address: str | None,
    weights: str | None,
    labels: dict[str, dict[str, Any]] | None,
    progress: bool,
    warn: Any,
) -> dict[str, Any]:
    import yaml
    from tqdm import tqdm

    _repair_done_log(out)
    done, committed = read_log(out)
    _clean_tmp(out)
    orphans = remove_orphans(out, committed)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    notes: list[str] = []
    paths = resolve_inputs(inputs, notes) if labels is None else list(inputs)
    if not paths:
        raise ValueError("no inputs to curate" + (": " + "; ".join(notes[:3]) if notes else ""))
    if warn is not None and not weights and cfg.sync.mode == "enforce" and not cfg.sync.enforce_fallback:
        warn(
            "no SyncNet weights: sync is measured with the weight-free fallback and NOT enforced "
            "(see --syncnet-weights, --require-syncnet)"
        )
    todo: list[Item] = []
    skipped = 0
    early: list[dict[str, Any]] = []  # inputs that fail the cheap file checks: no worker needed
    for p in paths:
        if input_id(p) in done:
            skipped += 1
            continue
        try:
            check_file(p)
        except MediaError as exc:
            rec = rejected_input(os.fspath(p), cfg, exc.code, str(exc))
            early.append({"task_id": task_id([rec["input_id"]]), "shards": [], "inputs": [rec]})
            continue
        todo.append((os.fspath(p), (labels or {}).get(os.fspath(p))))
    workers = default_workers() if workers is None else workers
    tasks = group_tasks(todo, cfg.output.inputs_per_task, workers)
    t0 = time.perf_counter()
    frames = clips = 0
    busy = cpu = 0.0
    by_stage: Counter[str] = Counter()
    if engine == "local":
        results = run_local(tasks, cfg, str(out), weights, workers)
    elif engine == "ray":
        results = run_ray(tasks, cfg, str(out), weights, workers, ray_address)
    else:
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    results = itertools.chain(early, results)
    bar = tqdm(
        total=len(todo) + len(early),
        unit="input",
        desc="curating",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    with open(out / "done.jsonl", "a", encoding="utf-8") as log:
        for task in results:
            _append_done(log, task)  # the commit record of the task: its shards are in place
            committed.update(task["shards"])
            for rec in task["inputs"]:
                frames += rec.get("frames", 0)
                busy += rec.get("proc_seconds", 0.0)
                cpu += rec.get("cpu_seconds", 0.0)
                clips += len(rec["manifest"])
                for r in rec["rejects"]:
                    by_stage[r["stage"]] += 1
            el = max(time.perf_counter() - t0, 1e-6)
            bar.set_postfix_str(
                f"clips={clips} {clips / el:.2f} clips/s {frames / el:.0f} frames/s "
                + " ".join(f"rej:{k}={v}" for k, v in sorted(by_stage.items())),
                refresh=False,
            )
            bar.update(len(task["inputs"]))
    bar.close()
    # shards of tasks given up after crashes (their inputs were redone one by one)
    remove_orphans(out, committed)
    wall = time.perf_counter() - t0
    run_info = {
        "engine": engine,
        "workers": workers,
        "inputs_given": len(paths),
        "inputs_processed": len(todo) + len(early),
        "inputs_skipped_resume": skipped,
        "tasks": len(tasks),
        "inputs_per_task": len(tasks[0][1]) if tasks else 0,
        "orphan_shards_removed": len(orphans),
        "wall_seconds": round(wall, 3),
        "frames_processed": frames,
        "frames_per_second": round(frames / wall, 2) if wall > 0 else 0.0,
        "frames_per_second_per_core": round(frames / wall / max(1, workers), 2) if wall > 0 else 0.0,
        "clips_per_second": round(clips / wall, 3) if wall > 0 else 0.0,
        # throughput of one busy worker (excludes pool start-up and idle time)
        "frames_per_worker_second": round(frames / busy, 2) if busy > 0 else 0.0,
        # the same per CPU-second of the workers (comparable across machines and loads)
        "frames_per_cpu_second": round(frames / cpu, 2) if cpu > 0 else 0.0,
        "syncnet_weights": path_text(weights) if weights else None,
        "inputs_skipped": notes,
    }
    return write_outputs(out, cfg, run_info)
