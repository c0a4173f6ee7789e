"""A finished build's bookkeeping at any size, without curating anything (benchmarks, tests).

``fake_build(out, n)`` writes what ``avf-data build`` leaves after curating ``n`` inputs of two
clips each: the build log (task, pack and seal lines with records shaped like real ones), the
checkpoint, the done ids, a list file naming the inputs, and shards of ~``shard_mb`` MB with
their indexes. The shards are sparse files (their bytes cost no disk and read as zeros), so a
1.36 M-input corpus' bookkeeping fits anywhere; everything that reads only bookkeeping (a rerun,
the outputs, ``inspect``, the sync pass's join) sees what it would see on the real corpus.
``fake_sync_log`` adds a sync pass's log for those shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

CLIP_BYTES = 200_000  # a 6 s clip: 160 px H.264 + 16 kHz wav + json (real builds: 180-290 KB)


def _record(i: int, source: str, key: str) -> dict:
    """One input's record as a task line holds it: two clips, one short reject (real shape)."""
    iid = key[:16]
    rows = []
    for c in range(2):
        start = round(c * 7.44, 6)
        rows.append(
            {
                "key": f"{iid}_{c:04d}",
                "source": source,
                "input_id": iid,
                "clip_index": c,
                "start": start,
                "end": round(start + 7.44, 6),
                "num_frames": 186,
                "shard": None,
                "sync_offset": (i + c) % 7 - 3,
                "sync_confidence": 0.1391409330682619,
                "sync_method": "fallback_motion_envelope",
                "sync_enforced": False,
                "blur": 338.577,
                "face_side": 342.4,
                "source_vfr": False,
                "seconds": 7.44,
                "flags": ["sync.confidence"],
            }
        )
    reject = {
        "source": source,
        "input_id": iid,
        "start": 14.88,
        "end": 14.96,
        "seconds": 0.08,
        "stage": "silence",
        "code": "silence.silence",
        "reason": "silence (0.08 s)",
    }
    stage = {"in": 1, "out": 1, "seconds_in": 14.96, "seconds_out": 14.96}
    return {
        "input_id": iid,
        "source": source,
        "seconds": 14.96,
        "frames": 374,
        "manifest": rows,
        "rejects": [reject],
        "stages": {
            "decode": stage,
            "scene": stage,
            "face": stage,
            "silence": {"in": 1, "out": 2, "seconds_in": 14.96, "seconds_out": 14.88},
            "crop": {"in": 2, "out": 2, "seconds_in": 14.88, "seconds_out": 14.88},
            "sync": {"in": 2, "out": 2, "seconds_in": 14.88, "seconds_out": 14.88},
            "quality": {"in": 2, "out": 2, "seconds_in": 14.88, "seconds_out": 14.88},
        },
        "sync_methods": ["fallback_motion_envelope"],
        "sync_enforced": False,
        "source_fps": 30.0,
        "source_vfr": False,
        "source_size": [512, 512],
        "proc_seconds": 1.451,
        "cpu_seconds": 1.4428,
        "peak_rss_mb": 474.6,
        "timing": {"decode": 0.77, "scene": 0.10, "face": 0.04, "silence": 0.004, "crop": 0.10, "sync": 0.18},
    }


def _sparse_shard(folder: Path, number: int, keys: list[str]) -> None:
    shard = folder / "shards" / f"shard-{number:06d}.tar"
    data = len(keys) * CLIP_BYTES
    size = data + 10240
    with open(shard, "wb") as fh:
        fh.truncate(size)
    index = {
        "format": "avf-shard-index/2",
        "shard": shard.name,
        "samples": len(keys),
        "bytes": size,
        "offsets": [k * CLIP_BYTES for k in range(len(keys))],
        "data_bytes": data,
        "extensions": {"json": len(keys), "mp4": len(keys), "wav": len(keys)},
        "seconds": round(7.44 * len(keys), 3),
        "labels": {},
    }
    (folder / "shards" / f"shard-{number:06d}.idx.json").write_text(json.dumps(index, separators=(",", ":")))


def fake_build(out: str | os.PathLike, n_inputs: int, *, inputs_per_task: int = 16, shard_mb: int = 512) -> dict:
    """Write a finished build of ``n_inputs`` (see module doc); returns its sizes."""
    folder = Path(out)
    for sub in ("shards", "segments", "thumbs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / ".avf-data").write_text(json.dumps({"tool": "avf-data", "kind": "build", "layout": 2}) + "\n")
    per_shard = max(1, shard_mb * 1_000_000 // CLIP_BYTES)
    ids = np.empty(n_inputs, dtype="<u8")
    shard, in_shard, shard_keys = 0, 0, []
    with open(folder / "build.jsonl", "wb") as log, open(folder / "inputs.txt", "w") as listing:
        for t0 in range(0, n_inputs, inputs_per_task):
            inputs = []
            for i in range(t0, min(n_inputs, t0 + inputs_per_task)):
                source = f"/corpus/{i // 1000:04d}/clip_{i:07d}.mp4"
                listing.write(source + "\n")
                iid = hashlib.sha1(os.fsencode(source)).hexdigest()[:16]
                ids[i] = int(iid, 16)
                inputs.append(_record(i, source, iid))
            tid = hashlib.sha1("\n".join(sorted(r["input_id"] for r in inputs)).encode()).hexdigest()[:16]
            clips = [row["key"] for r in inputs for row in r["manifest"]]
            segment = {
                "name": f"segments/{tid}.tar",
                "samples": len(clips),
                "offsets": [k * CLIP_BYTES for k in range(len(clips))],
                "data_bytes": len(clips) * CLIP_BYTES,
                "members": ["json", "mp4", "wav"],
            }
            line = {"kind": "task", "task_id": tid, "seq": t0, "n": len(inputs), "segment": segment, "inputs": inputs}
            log.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            first = 0
            while first < len(clips):
                count = min(len(clips) - first, per_shard - in_shard)
                pack = {"kind": "pack", "task_id": tid, "first": first, "count": count, "shard": shard}
                pack["at"] = in_shard * CLIP_BYTES
                log.write(json.dumps(pack, separators=(",", ":")).encode() + b"\n")
                shard_keys += clips[first : first + count]
                in_shard += count
                first += count
                if in_shard == per_shard:
                    _seal(folder, log, shard, shard_keys)
                    shard, in_shard, shard_keys = shard + 1, 0, []
        if shard_keys:
            _seal(folder, log, shard, shard_keys)
            shard += 1
    ids.tofile(folder / "done-ids.u64")
    state = {
        "layout": 2,
        "log_bytes": (folder / "build.jsonl").stat().st_size,
        "done_ids": n_inputs,
        "next_shard": shard,
        "open_bytes": 0,
        "open_index": {},
        "backlog": [],
    }
    (folder / "state.json").write_text(json.dumps(state))
    return {"inputs": n_inputs, "shards": shard, "log_bytes": state["log_bytes"]}


def _seal(folder: Path, log, number: int, keys: list[str]) -> None:
    _sparse_shard(folder, number, keys)
    size = len(keys) * CLIP_BYTES + 10240
    log.write(json.dumps({"kind": "seal", "shard": number, "samples": len(keys), "bytes": size}).encode() + b"\n")


def fake_sync_log(out: str | os.PathLike, weights: str | os.PathLike, *, max_offset_frames: int = 3) -> int:
    """A sync pass's log that has scored every shard of ``fake_build(out)`` (all clips kept),
    with the settings header of ``weights`` and the default thresholds; returns its size."""
    folder = Path(out)
    digest = hashlib.sha1(Path(weights).read_bytes()).hexdigest()
    header = {
        "kind": "header",
        "version": 1,
        "weights_sha1": digest,
        "max_offset_frames": max_offset_frames,
        "min_confidence_syncnet": 3.0,
        "search_frames": 15,
    }
    by_shard: dict[int, list[str]] = {}
    with open(folder / "build.jsonl", "rb") as fh:
        tasks: dict[str, list[str]] = {}
        for raw in fh:
            line = json.loads(raw)
            if line["kind"] == "task":
                tasks[line["task_id"]] = [r["key"] for rec in line["inputs"] for r in rec["manifest"]]
            elif line["kind"] == "pack":
                keys = tasks[line["task_id"]][line["first"] : line["first"] + line["count"]]
                by_shard.setdefault(line["shard"], []).extend(keys)
                if line["first"] + line["count"] >= len(tasks[line["task_id"]]):
                    del tasks[line["task_id"]]
    sync = {"method": "syncnet_v2", "offset_frames": 1, "confidence": 6.2, "mean_dists": [9.5] * 31, "note": None}
    (folder / "sync").mkdir(exist_ok=True)
    with open(folder / "sync.jsonl", "w", encoding="utf-8") as log:
        log.write(json.dumps(header) + "\n")
        for number in sorted(by_shard):
            keys = by_shard[number]
            clips = {k: {"sync": sync, "code": None, "reason": None, "input": "source"} for k in keys}
            (folder / "sync" / f"shard-{number:06d}.json").write_text(json.dumps(clips, separators=(",", ":")))
            line = {
                "kind": "shard",
                "shard": f"shards/shard-{number:06d}.tar",
                "kept": len(keys),
                "rejected": 0,
                "codes": {},
                "inputs": {"source": len(keys)},
                "sha1": "0" * 40,
                "bytes": len(keys) * CLIP_BYTES + 10240,
                "index": None,
            }
            log.write(json.dumps(line, separators=(",", ":")) + "\n")
    return (folder / "sync.jsonl").stat().st_size
