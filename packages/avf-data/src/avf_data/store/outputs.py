"""``manifest.jsonl``, ``rejects.jsonl``, ``stats.json`` and the report, written from the logs.

One streaming pass over ``build.jsonl`` (joined, shard by shard, with the decisions of
``sync.jsonl`` when a sync pass ran) writes every output; memory holds counters, the row of
the line at hand and a bounded sample for the report, whatever the size of the corpus.

* manifest rows come out where their clips were packed (``pack`` lines), so the manifest is
  in shard order: row ``i`` of shard ``n`` is sample ``i`` of ``shard-n.tar``;
* reject rows come out in the order of the inputs (a task is counted where it takes its place in
  the order, not when its worker finished), then the clips the sync pass moved;
* a clip the sync pass turned down leaves the manifest for the rejects with its scores, and
  the stage counts follow, so every input second stays in a clip or a reject row.

The outputs are derived, never edited: a run that changed neither log (a rerun of a finished
build) only refreshes the ``run`` part of ``stats.json`` and the report.
"""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..rows import ManifestRow
from ..tars import read_local_index, read_sample_at
from .examples import Reservoir, reject_row_id, unit_hash
from .folder import THUMB_NAME, OutputFolder, write_atomic
from .log import JsonLog
from .packer import segment_rows
from .report import write_report
from .stats import StatsAccumulator, is_pseudo_input, reject_code, stage_warnings

REPORT_INPUTS = 500  # inputs in the report's per-input table
REPORT_CLIPS = 200  # rows of the accepted-clips table
REPORT_REJECTS = 300  # rows of the rejects table


def log_sizes(folder: OutputFolder) -> dict[str, int]:
    """The sizes of the two logs: the outputs are current when they were written from these."""
    return {"build": JsonLog(folder.build_log).size(), "sync": JsonLog(folder.sync_log).size()}


def write_outputs(
    folder: OutputFolder,
    run_info: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
    report_examples: int = 12,
    thumbnails: bool = True,
    progress: bool = False,
    stage_order: list[str] | None = None,
) -> dict[str, Any]:
    """(Re)write the outputs from the logs; returns the stats dict (see module doc).

    ``extra``: fields to add to stats.json (e.g. the pipeline version, the sync pass's summary).
    ``stage_order``: the order of the stages' rows in the tables (the pipeline's).
    """
    sizes = log_sizes(folder)
    old = _read_json(folder.stats)
    data = _read_json(folder.report_data)
    if old.get("outputs_from") == sizes and data and folder.manifest.exists() and folder.rejects.exists():
        stats = {**old, **(extra or {}), "run": run_info}
    else:
        stats, data = _stream(folder, sizes, report_examples, thumbnails, progress, stage_order)
        stats.update(extra or {})
        stats["run"] = run_info
        write_atomic(folder.report_data, json.dumps(data, ensure_ascii=False))
    write_atomic(folder.stats, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    write_report(folder, stats, data)
    return stats


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class _SyncDecisions:
    """The sync pass's verdicts, loaded one shard at a time (``sync/shard-NNNNNN.json``, for the
    shards ``sync.jsonl`` lists)."""

    def __init__(self, folder: OutputFolder) -> None:
        self.folder = folder
        self.header: dict[str, Any] | None = None
        self.scored: set[str] = set()
        for _, line in JsonLog(folder.sync_log).iter_from(0):
            if line.get("kind") == "header":
                self.header = line
            elif line.get("kind") == "shard":
                self.scored.add(line["shard"])
        self._shard: str | None = None
        self._clips: dict[str, dict[str, Any]] = {}

    def for_shard(self, shard: str) -> dict[str, dict[str, Any]]:
        if shard != self._shard:
            self._shard = shard
            self._clips = {}
            if shard in self.scored:
                self._clips = json.loads(self.folder.decisions(shard).read_text(encoding="utf-8"))
        return self._clips


def _judged(row: dict[str, Any], d: dict[str, Any]) -> None:
    """A kept clip's manifest row with the sync pass's scores."""
    sj = d["sync"]
    row.update(
        sync_offset=sj["offset_frames"],
        sync_confidence=sj["confidence"],
        sync_method=sj["method"],
        sync_enforced=True,
        sync_input=d["input"],
    )


def _sync_reject(row: dict[str, Any], d: dict[str, Any]) -> dict[str, Any]:
    return (
        ManifestRow.from_dict(row)
        .rejected("sync", d["code"], d["reason"], sync=d["sync"], sync_input=d["input"])
        .to_dict()
    )


class _ReportData:
    """What the report shows, collected while the rows stream past (bounded)."""

    def __init__(self, k: int) -> None:
        self.per_input: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.manifest_head: list[dict[str, Any]] = []
        self.rejects_head: list[dict[str, Any]] = []
        self.sync_head: list[dict[str, Any]] = []
        self.accepted, self.rejected = Reservoir(k), Reservoir(k)

    def input(self, rec: dict[str, Any]) -> None:
        if not is_pseudo_input(rec) and len(self.per_input) < REPORT_INPUTS:
            self.per_input[rec["input_id"]] = _input_summary(rec)

    def reject(self, row: dict[str, Any], moved_from: dict[str, Any] | None = None) -> None:
        head = self.rejects_head if moved_from is None else self.sync_head
        if len(head) < REPORT_REJECTS:
            head.append(row)
        self.rejected.offer(unit_hash(reject_row_id(row)), _example_reject(row), reject_code(row))
        if moved_from is not None:
            _move_in_summary(self.per_input, moved_from, row)

    def clip(self, row: dict[str, Any], shard: int, position: int) -> None:
        if len(self.manifest_head) < REPORT_CLIPS:
            self.manifest_head.append(row)
        self.accepted.offer(unit_hash(row["key"]), _example_clip(row, shard, position))


class _OutputsPass:
    """One pass over ``build.jsonl`` writing the manifest and the rejects (see module doc)."""

    def __init__(self, folder: OutputFolder, k: int, man, rej, sync_rej, stage_order: list[str] | None) -> None:
        self.folder, self.man, self.rej, self.sync_rej = folder, man, rej, sync_rej
        self.log = JsonLog(folder.build_log)
        self.sync = _SyncDecisions(folder)
        self.acc = StatsAccumulator(stage_order)
        self.report = _ReportData(k)
        self.task_at: dict[str, int] = {}  # tasks not all emitted yet: their line's offset
        self.cache: OrderedDict[str, dict[str, Any]] = OrderedDict()  # the last task lines read
        self.shard_pos: dict[int, int] = {}
        self.sealed = self.sync_moved = 0

    def task(self, offset: int, line: dict[str, Any]) -> None:
        """A committed task: counted where it takes its place in the order (its first pack
        line), so the outputs do not depend on which worker finished first."""
        if line.get("seq") is None:  # the import's bad CSV rows: no place to wait for
            self._counted(line)
            return
        self.task_at[line["task_id"]] = offset
        self.cache[line["task_id"]] = line
        while len(self.cache) > 64:
            self.cache.popitem(last=False)

    def _counted(self, line: dict[str, Any]) -> None:
        for rec in line.get("inputs", []):
            self.acc.add_record(rec)
            self.report.input(rec)
            for r in rec["rejects"]:
                self.rej.write(json.dumps(r, ensure_ascii=False) + "\n")
                self.report.reject(r)

    def pack(self, line: dict[str, Any]) -> None:
        tid = line["task_id"]
        task = self.cache.get(tid) or self.log.read_at(self.task_at[tid])
        if line["first"] == 0:
            self._counted(task)
        rows = segment_rows(task)
        if line["count"]:
            self._emit(rows[line["first"] : line["first"] + line["count"]], int(line["shard"]))
        if line["first"] + line["count"] >= len(rows):
            self.task_at.pop(tid, None)

    def _emit(self, rows: list[dict[str, Any]], number: int) -> None:
        """Manifest rows of clips packed into shard ``number``, with the sync pass's verdicts."""
        shard = self.folder.shard_name(number)
        decisions = self.sync.for_shard(shard)
        for row in rows:
            row = {**row, "shard": shard}
            d = decisions.get(row["key"])
            if d is not None and d.get("code"):  # the sync pass turned it down
                reject = _sync_reject(row, d)
                self.sync_rej.write(json.dumps(reject, ensure_ascii=False) + "\n")
                self.acc.move_to_rejects(row, reject)
                self.report.reject(reject, moved_from=row)
                self.sync_moved += 1
                continue
            if d is not None:
                _judged(row, d)
            self.man.write(json.dumps(row, ensure_ascii=False) + "\n")
            pos = self.shard_pos.get(number, 0)
            self.shard_pos[number] = pos + 1
            self.report.clip(row, number, pos)

    def seal(self, line: dict[str, Any]) -> None:
        self.sealed = max(self.sealed, int(line["shard"]) + 1)

    def stats(self, sizes: dict[str, int]) -> dict[str, Any]:
        folder, sealed = self.folder, self.sealed
        scored = sum(1 for n in range(sealed) if folder.shard_name(n) in self.sync.scored)
        if self.sync.header is not None and sealed and scored == sealed:
            self.acc.judged_by_syncnet()
        stats = self.acc.result()
        stats["warnings"] = stage_warnings(stats)
        stats["shards"] = {
            "count": sealed,
            "pattern": folder.shard_pattern(sealed),
            "bytes": sum(_size(folder.shard(n)) for n in range(sealed)),
        }
        if self.sync.header is not None:
            stats["sync_pass_coverage"] = {"shards_scored": scored, "shards": sealed, "clips_moved": self.sync_moved}
        stats["outputs_from"] = sizes
        return stats


def _stream(
    folder: OutputFolder, sizes: dict[str, int], k: int, thumbnails: bool, progress: bool, stage_order
) -> tuple[dict[str, Any], dict[str, Any]]:
    from tqdm import tqdm

    tmp_manifest = folder.manifest.with_name("manifest.jsonl.tmp")
    tmp_rejects = folder.rejects.with_name("rejects.jsonl.tmp")
    tmp_sync = folder.rejects.with_name("rejects.jsonl.sync-tmp")
    bar = tqdm(total=sizes["build"], unit="B", unit_scale=True, desc="outputs", file=sys.stderr, disable=not progress)
    with open(tmp_manifest, "w", encoding="utf-8") as man, open(tmp_rejects, "w", encoding="utf-8") as rej:
        with open(tmp_sync, "w", encoding="utf-8") as sync_rej:
            run = _OutputsPass(folder, k, man, rej, sync_rej, stage_order)
            last = 0
            for offset, line in run.log.iter_from(0, sizes["build"]):
                bar.update(offset - last)
                last = offset
                kind = line.get("kind")
                if kind == "task":
                    run.task(offset, line)
                elif kind == "pack":
                    run.pack(line)
                elif kind == "seal":
                    run.seal(line)
            bar.update(sizes["build"] - last)
        with open(tmp_sync, encoding="utf-8") as fh:  # the clips the sync pass moved come last
            for raw in fh:
                rej.write(raw)
    bar.close()
    os.replace(tmp_manifest, folder.manifest)
    os.replace(tmp_rejects, folder.rejects)
    tmp_sync.unlink(missing_ok=True)
    return run.stats(sizes), _report_data(folder, run.report, k, thumbnails)


def _report_data(folder: OutputFolder, report: _ReportData, k: int, thumbnails: bool) -> dict[str, Any]:
    """The report's examples with their pictures (made now for clips, by workers for rejects)."""
    examples_a = report.accepted.sample()
    examples_r = report.rejected.chosen(k)
    if thumbnails:
        _make_clip_thumbs(folder, examples_a)
    _prune_thumbs(folder, {e["thumb"] for e in examples_a + examples_r if e.get("thumb")})
    for e in examples_r:
        if e.get("thumb") and not (folder.root / e["thumb"]).exists():
            e["thumb"] = None
    return {
        "per_input": list(report.per_input.values()),
        "manifest_head": report.manifest_head,
        "rejects_head": (report.rejects_head + report.sync_head)[:REPORT_REJECTS],
        "accepted": [e for e in examples_a if not thumbnails or e.get("thumb")],
        "rejected": examples_r,
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _input_summary(rec: dict[str, Any]) -> dict[str, Any]:
    codes: dict[str, float] = {}
    for r in rec["rejects"]:
        codes[reject_code(r)] = codes.get(reject_code(r), 0.0) + r["seconds"]
    return {
        "input_id": rec["input_id"],
        "source": rec["source"],
        "clips": len(rec["manifest"]),
        "kept": round(sum(r["seconds"] for r in rec["manifest"]), 6),
        "rejected": round(sum(r["seconds"] for r in rec["rejects"]), 6),
        "codes": codes,
    }


def _move_in_summary(per_input: dict[str, dict[str, Any]], row: dict[str, Any], reject: dict[str, Any]) -> None:
    """A clip of one of the listed inputs moved to the rejects."""
    s = per_input.get(row.get("input_id", ""))
    if s is None:
        return
    s["clips"] -= 1
    s["kept"] = round(s["kept"] - reject["seconds"], 6)
    s["rejected"] = round(s["rejected"] + reject["seconds"], 6)
    s["codes"][reject["code"]] = s["codes"].get(reject["code"], 0.0) + reject["seconds"]


def _example_clip(row: dict[str, Any], shard: int, pos: int) -> dict[str, Any]:
    return {
        "key": row["key"],
        "source": row["source"],
        "start": row["start"],
        "end": row["end"],
        "shard": shard,
        "position": pos,
        "thumb": f"thumbs/{row['key']}.jpg",
    }


def _example_reject(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": row["source"],
        "start": row["start"],
        "end": row["end"],
        "stage": row.get("stage"),
        "code": reject_code(row),
        "reason": row.get("reason", ""),
        "thumb": f"thumbs/{reject_row_id(row)}.jpg",
    }


def _make_clip_thumbs(folder: OutputFolder, examples: list[dict[str, Any]], size: int = 96) -> None:
    """The middle frame of each example clip, read from its shard with one seek."""
    from PIL import Image

    from ..shards import VideoReader

    folder.thumbs.mkdir(exist_ok=True)
    for e in examples:
        target = folder.root / e["thumb"]
        if target.exists():
            continue
        shard = folder.shard(e["shard"])
        index = read_local_index(shard)
        try:
            if index is None or index.offsets is None:
                raise OSError("no index with offsets")
            sample = read_sample_at(shard, index, e["position"])
            with VideoReader(sample["mp4"]) as video:
                frame = video.frames([video.num_frames // 2])[0]
            im = Image.fromarray(frame)
            im.thumbnail((size, size))
            im.save(target, quality=80)
        except Exception:  # noqa: BLE001 - a picture is a nicety: the tile says "no picture"
            e["thumb"] = None


def _prune_thumbs(folder: OutputFolder, keep: set[str]) -> None:
    """Delete pictures the report does not show (workers make a few candidates per task)."""
    if not folder.thumbs.is_dir():
        return
    for p in folder.thumbs.iterdir():
        if THUMB_NAME.match(p.name) and f"thumbs/{p.name}" not in keep:
            p.unlink(missing_ok=True)
