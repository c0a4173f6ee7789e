"""``manifest.jsonl``, ``rejects.jsonl``, ``stats.json`` and the report, written from the logs.

One streaming pass over ``build.jsonl`` (joined, shard by shard, with the decisions of
``sync.jsonl`` when a sync pass ran) writes every output; memory holds counters, the row of
the line at hand and a bounded sample for the report, whatever the size of the corpus.

* manifest rows come out where their clips were packed (``pack`` lines), so the manifest is
  in shard order: row ``i`` of shard ``n`` is sample ``i`` of ``shard-n.tar``;
* reject rows come out in the order their tasks finished, then the clips the sync pass moved;
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
) -> dict[str, Any]:
    """(Re)write the outputs from the logs; returns the stats dict (see module doc).

    ``extra``: fields to add to stats.json (e.g. the pipeline version, the sync pass's summary).
    """
    sizes = log_sizes(folder)
    old = _read_json(folder.stats)
    data = _read_json(folder.report_data)
    if old.get("outputs_from") == sizes and data and folder.manifest.exists() and folder.rejects.exists():
        stats = {**old, **(extra or {}), "run": run_info}
    else:
        stats, data = _stream(folder, sizes, report_examples, thumbnails, progress)
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
    """The sync pass's decisions, loaded one shard at a time (``sync.jsonl`` has a line per shard)."""

    def __init__(self, folder: OutputFolder) -> None:
        self.log = JsonLog(folder.sync_log)
        self.header: dict[str, Any] | None = None
        self.offsets: dict[str, int] = {}
        for offset, line in self.log.iter_from(0):
            if line.get("kind") == "header":
                self.header = line
            elif line.get("kind") == "shard":
                self.offsets[line["shard"]] = offset
        self._shard: str | None = None
        self._clips: dict[str, dict[str, Any]] = {}

    def for_shard(self, shard: str) -> dict[str, dict[str, Any]]:
        if shard != self._shard:
            self._shard = shard
            offset = self.offsets.get(shard)
            self._clips = self.log.read_at(offset)["clips"] if offset is not None else {}
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


def _stream(
    folder: OutputFolder, sizes: dict[str, int], k: int, thumbnails: bool, progress: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    from tqdm import tqdm

    log = JsonLog(folder.build_log)
    sync = _SyncDecisions(folder)
    acc = StatsAccumulator()
    per_input: OrderedDict[str, dict[str, Any]] = OrderedDict()
    manifest_head: list[dict[str, Any]] = []
    rejects_head: list[dict[str, Any]] = []
    sync_head: list[dict[str, Any]] = []
    accepted, rejected = Reservoir(k), Reservoir(k)
    task_at: dict[str, int] = {}  # tasks whose clips are not all emitted: line offset
    cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
    shard_pos: dict[int, int] = {}
    sealed = 0
    sync_moved = 0
    tmp_manifest = folder.manifest.with_name("manifest.jsonl.tmp")
    tmp_rejects = folder.rejects.with_name("rejects.jsonl.tmp")
    tmp_sync = folder.rejects.with_name("rejects.jsonl.sync-tmp")
    bar = tqdm(total=sizes["build"], unit="B", unit_scale=True, desc="outputs", file=sys.stderr, disable=not progress)

    def note_reject(row: dict[str, Any]) -> None:
        rejected.offer(unit_hash(reject_row_id(row)), _example_reject(row), reject_code(row))

    with open(tmp_manifest, "w", encoding="utf-8") as man, open(tmp_rejects, "w", encoding="utf-8") as rej:
        with open(tmp_sync, "w", encoding="utf-8") as sync_rej:
            last = 0
            for offset, line in log.iter_from(0, sizes["build"]):
                bar.update(offset - last)
                last = offset
                kind = line.get("kind")
                if kind == "task":
                    for rec in line.get("inputs", []):
                        acc.add_record(rec)
                        if not is_pseudo_input(rec) and len(per_input) < REPORT_INPUTS:
                            per_input[rec["input_id"]] = _input_summary(rec)
                        for r in rec["rejects"]:
                            rej.write(json.dumps(r, ensure_ascii=False) + "\n")
                            if len(rejects_head) < REPORT_REJECTS:
                                rejects_head.append(r)
                            note_reject(r)
                    if (line.get("segment") or {}).get("samples"):
                        task_at[line["task_id"]] = offset
                        cache[line["task_id"]] = line
                        while len(cache) > 64:
                            cache.popitem(last=False)
                elif kind == "pack":
                    tid = line["task_id"]
                    task = cache.get(tid) or log.read_at(task_at[tid])
                    number = int(line["shard"])
                    shard = folder.shard_name(number)
                    decisions = sync.for_shard(shard)
                    rows = segment_rows(task)
                    for row in rows[line["first"] : line["first"] + line["count"]]:
                        row = {**row, "shard": shard}
                        d = decisions.get(row["key"])
                        if d is not None and d.get("code"):  # the sync pass turned it down
                            reject = _sync_reject(row, d)
                            sync_rej.write(json.dumps(reject, ensure_ascii=False) + "\n")
                            acc.move_to_rejects(row, reject)
                            _move_in_summary(per_input, row, reject)
                            if len(sync_head) < REPORT_REJECTS:
                                sync_head.append(reject)
                            note_reject(reject)
                            sync_moved += 1
                            continue
                        if d is not None:
                            _judged(row, d)
                        man.write(json.dumps(row, ensure_ascii=False) + "\n")
                        if len(manifest_head) < REPORT_CLIPS:
                            manifest_head.append(row)
                        pos = shard_pos.get(number, 0)
                        shard_pos[number] = pos + 1
                        accepted.offer(unit_hash(row["key"]), _example_clip(row, number, pos))
                    if line["first"] + line["count"] >= len(rows):
                        task_at.pop(tid, None)
                elif kind == "seal":
                    sealed = max(sealed, int(line["shard"]) + 1)
            bar.update(sizes["build"] - last)
        with open(tmp_sync, encoding="utf-8") as fh:
            for raw in fh:
                rej.write(raw)
    bar.close()
    os.replace(tmp_manifest, folder.manifest)
    os.replace(tmp_rejects, folder.rejects)
    tmp_sync.unlink(missing_ok=True)

    scored = sum(1 for n in range(sealed) if folder.shard_name(n) in sync.offsets)
    if sync.header is not None and sealed and scored == sealed:
        acc.judged_by_syncnet()
    stats = acc.result()
    stats["warnings"] = stage_warnings(stats)
    stats["shards"] = {
        "count": sealed,
        "pattern": folder.shard_pattern(sealed),
        "bytes": sum(_size(folder.shard(n)) for n in range(sealed)),
    }
    if sync.header is not None:
        stats["sync_pass_coverage"] = {"shards_scored": scored, "shards": sealed, "clips_moved": sync_moved}
    stats["outputs_from"] = sizes
    examples_a = accepted.sample()
    examples_r = rejected.chosen(k)
    if thumbnails:
        _make_clip_thumbs(folder, examples_a)
    _prune_thumbs(folder, {e["thumb"] for e in examples_a + examples_r if e.get("thumb")})
    for e in examples_r:
        if e.get("thumb") and not (folder.root / e["thumb"]).exists():
            e["thumb"] = None
    data = {
        "per_input": list(per_input.values()),
        "inputs_listed": len(per_input),
        "manifest_head": manifest_head,
        "rejects_head": (rejects_head + sync_head)[:REPORT_REJECTS],
        "accepted": [e for e in examples_a if not thumbnails or e.get("thumb")],
        "rejected": examples_r,
    }
    return stats, data


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
