"""``avf-data inspect DIR``: a quick summary of a curated folder (or of shard files)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .shards import expand_shards, iter_raw_samples


def summarize(target: str | os.PathLike, decode: int = 1) -> dict[str, Any]:
    """Shard count, sample count, extensions, keys, stats.json highlights; decodes ``decode``
    samples to report their shapes (0 = none)."""
    import tarfile

    target = Path(target)
    if not target.exists():
        raise FileNotFoundError(f"{target} not found")
    info: dict[str, Any] = {"path": str(target)}
    try:
        shards = expand_shards(target / "shards" if (target / "shards").is_dir() else target)
    except FileNotFoundError:
        shards = []
    for p in shards:
        if not tarfile.is_tarfile(p):
            raise ValueError(f"{p} is not a tar shard")
    manifest = target / "manifest.jsonl"
    if manifest.is_file():
        listed = set()
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                shard = json.loads(line).get("shard")
                if shard:
                    listed.add(shard)
        missing = sorted(s for s in listed if not (target / s).is_file())
        info["missing_shards"] = missing
    info["shards"] = len(shards)
    info["shard_bytes"] = sum(os.path.getsize(p) for p in shards)
    n = 0
    exts: Counter[str] = Counter()
    labels: Counter[int] = Counter()
    keys: set[str] = set()
    dup = 0
    seconds = 0.0
    first = None
    for s in iter_raw_samples(shards):
        n += 1
        if s["__key__"] in keys:
            dup += 1
        keys.add(s["__key__"])
        exts.update(k for k in s if not k.startswith("__"))
        meta = json.loads(s.get("json", b"{}"))
        seconds += float(meta.get("end", 0)) - float(meta.get("start", 0))
        if "cls" in s:
            labels[int(s["cls"])] += 1
        if first is None and decode:
            first = s
    info.update(samples=n, duplicate_keys=dup, extensions=dict(exts), seconds=round(seconds, 3))
    if labels:
        info["labels"] = dict(sorted(labels.items()))
    if first is not None:
        from .shards import decode_sample

        c = decode_sample(first)
        info["example"] = {
            "key": c.key,
            "frames": list(c.frames.shape),
            "fps": c.fps,
            "audio_samples": int(len(c.audio)),
            "sample_rate": c.sample_rate,
            "meta_keys": sorted(c.meta),
        }
    stats_path = target / "stats.json"
    if stats_path.exists():
        st = json.loads(stats_path.read_text())
        info["stats"] = {
            k: st.get(k)
            for k in (
                "inputs",
                "inputs_rejected",
                "clips",
                "seconds_in",
                "seconds_accepted",
                "seconds_rejected",
                "sync_scorer",
            )
        }
        info["stats"]["stages"] = {k: f"{v['in']} -> {v['out']}" for k, v in st.get("stages", {}).items()}
        info["stats"]["rejects_by_code"] = {k: v.get("count") for k, v in (st.get("rejects_by_code") or {}).items()}
        info["stats"]["sync_enforced"] = st.get("sync_enforced")
    classes = target / "classes.json"
    if classes.exists():
        info["classes"] = json.loads(classes.read_text())
    return info


def format_summary(info: dict[str, Any]) -> str:
    lines = [
        f"{info['path']}: {info['samples']} samples in {info['shards']} shards "
        f"({info['shard_bytes'] / 1e6:.1f} MB, {info['seconds']:.1f} s of clips)"
    ]
    lines.append(f"  files per sample: {info['extensions']}")
    if not info["shards"]:
        lines.append("  WARNING: no shards found")
    if info["duplicate_keys"]:
        lines.append(f"  WARNING: {info['duplicate_keys']} duplicate keys")
    if "example" in info:
        e = info["example"]
        lines.append(
            f"  example {e['key']}: frames {e['frames']} @ {e['fps']:g} fps, "
            f"audio {e['audio_samples']} samples @ {e['sample_rate']} Hz"
        )
        lines.append(f"  json keys: {', '.join(e['meta_keys'])}")
    if "labels" in info:
        lines.append(f"  samples per class index: {info['labels']}")
    if "classes" in info:
        lines.append(f"  classes: {info['classes']}")
    if "stats" in info:
        st = info["stats"]
        lines.append(
            f"  inputs {st['inputs']} ({st['inputs_rejected']} rejected whole); clips {st['clips']}; "
            f"seconds in/accepted/rejected {st['seconds_in']}/{st['seconds_accepted']}/{st['seconds_rejected']}"
        )
        lines.append(f"  sync scorer: {st['sync_scorer']}")
        lines.append("  stages: " + ", ".join(f"{k} {v}" for k, v in (st.get("stages") or {}).items()))
        for code, count in (st.get("rejects_by_code") or {}).items():
            lines.append(f"    reject {code}: {count}")
    if info.get("missing_shards"):
        lines.append(
            f"  WARNING: {len(info['missing_shards'])} shards listed in manifest.jsonl are missing: "
            + ", ".join(info["missing_shards"][:5])
        )
    return "\n".join(lines)
