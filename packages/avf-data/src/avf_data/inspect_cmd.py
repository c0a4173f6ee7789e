"""``avf-data inspect DIR``: a summary of a curated folder (or of shard files).

By default the summary comes from the shard indexes (``.idx.json``: samples, bytes, members,
seconds, labels per shard), ``stats.json`` and ``classes.json``: one small read per shard,
whatever the corpus weighs. ``--verify`` reads every sample: it counts keys, members and
labels itself, finds duplicate keys, decodes one example, and compares what it read with the
indexes and the manifest.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .shards import expand_shards, iter_raw_samples, read_index
from .tars import ShardReadError


def _shards_of(target: Path) -> list[str]:
    try:
        return expand_shards(target / "shards" if (target / "shards").is_dir() else target)
    except FileNotFoundError:
        return []


def summarize(target: str | os.PathLike, *, verify: bool = False) -> dict[str, Any]:
    """Shard count, sample count, members, seconds, labels and stats.json highlights (see
    module doc); ``verify`` reads every sample and lists disagreements under ``problems``."""
    target = Path(target)
    if not target.exists():
        raise FileNotFoundError(f"{target} not found")
    info: dict[str, Any] = {"path": str(target), "problems": []}
    shards = _shards_of(target)
    if not shards and not (target / "stats.json").exists():  # a build that kept no clip has stats
        raise ValueError(
            f"{target} holds no avf shards (no *.tar in it{' or in its shards/' if target.is_dir() else ''}); "
            "give the output folder of `avf-data build` or `import`, or shard files"
        )
    counts = _tally(shards, info)
    if verify:
        _verify(target, shards, counts, info)
    stats_path = target / "stats.json"
    if stats_path.exists():
        st = json.loads(stats_path.read_text())
        info["stats"] = _stats_highlights(st)
        if st.get("clips") is not None and st["clips"] != info["samples"]:
            info["problems"].append(f"stats.json counts {st['clips']} clips, the shard indexes {info['samples']}")
    classes = target / "classes.json"
    if classes.exists():
        info["classes"] = json.loads(classes.read_text())
    return info


def _tally(shards: list[str], info: dict[str, Any]) -> dict[str, int]:
    """Corpus totals into ``info`` from the cheap indexes; returns samples per shard for ``--verify`` to check."""
    exts: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    nbytes, seconds = 0, 0.0
    unindexed: list[str] = []
    counts: dict[str, int] = {}
    for shard in shards:
        index = read_index(shard)
        if index is None:
            unindexed.append(shard)
            continue
        counts[shard] = index.samples
        nbytes += index.bytes
        exts.update(index.extensions)
        labels.update(index.labels)
        seconds += index.seconds
    for shard in unindexed:
        counts[shard], size = _count_tar(shard)
        nbytes += size
    info.update(
        shards=len(shards),
        shard_bytes=nbytes,
        samples=sum(counts[s] for s in shards),
        extensions=dict(sorted(exts.items())),
        seconds=round(seconds, 3),
        shards_without_index=len(unindexed),
    )
    if labels:
        info["labels"] = {int(k): v for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))}
    return counts


def _count_tar(shard: str) -> tuple[int, int]:
    """Samples and bytes of a shard with no (or a stale) index, from its tar headers and its
    small json members (every header checked before anything is read: a hostile shard is
    refused in one line naming the member); a tar without any json member is no avf shard."""
    n = with_json = 0
    try:
        for sample in iter_raw_samples([shard], exts=("json",)):
            n += 1
            with_json += "json" in sample
    except ShardReadError as exc:
        raise ValueError(str(exc)) from None
    if n and not with_json:
        raise ValueError(f"{shard}: none of its {n} samples has a .json member: not an avf shard")
    try:
        return n, os.path.getsize(shard)
    except OSError:
        return n, 0


def _stats_highlights(st: dict[str, Any]) -> dict[str, Any]:
    """The stats.json fields the summary prints, flattened so they read on one line each."""
    fields = "inputs inputs_rejected clips seconds_in seconds_accepted seconds_rejected sync_scorer".split()
    return {
        **{k: st.get(k) for k in fields},
        "stages": {k: f"{v['in']} -> {v['out']}" for k, v in st.get("stages", {}).items()},
        "rejects_by_code": {k: v.get("count") for k, v in (st.get("rejects_by_code") or {}).items()},
        "sync_enforced": st.get("sync_enforced"),
        "shard_pattern": (st.get("shards") or {}).get("pattern"),
    }


def _verify(target: Path, shards: list[str], counts: dict[str, int], info: dict[str, Any]) -> None:
    """Read every sample; record what disagrees with the indexes and the manifest."""
    keys: set[str] = set()
    exts: Counter[str] = Counter()
    per_shard: Counter[str] = Counter()
    first = None
    for shard in shards:
        try:
            for s in iter_raw_samples([shard]):
                per_shard[shard] += 1
                keys.add(s["__key__"])
                exts.update(k for k in s if not k.startswith("__"))
                if first is None:
                    first = s
        except ShardReadError as exc:  # a hostile or broken shard: one line naming the member
            raise ValueError(str(exc)) from None
    for shard in shards:
        if per_shard[shard] != counts.get(shard):
            info["problems"].append(
                f"{shard}: index says {counts.get(shard)} samples, the tar holds {per_shard[shard]}"
            )
    info["verified"] = {"samples": sum(per_shard.values()), "extensions": dict(sorted(exts.items()))}
    dup = info["verified"]["samples"] - len(keys)  # every sample read either adds a new key or repeats one
    info["duplicate_keys"] = dup
    if dup:
        info["problems"].append(f"{dup} duplicate keys")
    manifest = target / "manifest.jsonl"
    if manifest.is_file():
        _check_manifest(target, manifest, keys, info)
    if first is not None:
        info["example"] = _example(first)


def _check_manifest(target: Path, manifest: Path, keys: set[str], info: dict[str, Any]) -> None:
    """Flag shards the manifest names that are gone, and keys it lists that the shards lack (or vice versa)."""
    listed: set[str] = set()
    shard_names: set[str] = set()
    with open(manifest, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                listed.add(row["key"])
                if row.get("shard"):
                    shard_names.add(row["shard"])
    missing = sorted(s for s in shard_names if not (target / s).is_file())
    info["missing_shards"] = missing
    if missing:
        info["problems"].append(f"{len(missing)} shards listed in manifest.jsonl are missing: {', '.join(missing[:5])}")
    if listed != keys:
        info["problems"].append(
            f"manifest.jsonl and the shards disagree: {len(listed - keys)} keys only in the manifest, "
            f"{len(keys - listed)} only in the shards"
        )


def _example(first: dict[str, Any]) -> dict[str, Any]:
    """Decode one sample, proving the members are readable, and describe its shapes."""
    from .shards import decode_sample

    try:
        c = decode_sample(first)
    except Exception as exc:  # noqa: BLE001 - any decoder's failure, named and on one line
        why = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(
            f"{first.get('__url__')}: sample {first.get('__key__')!r} does not decode ({type(exc).__name__}: {why})"
        ) from None
    return {
        "key": c.key,
        "frames": list(c.frames.shape),
        "fps": c.fps,
        "audio_samples": int(len(c.audio)),
        "sample_rate": c.sample_rate,
        "meta_keys": sorted(c.meta),
    }


def format_summary(info: dict[str, Any]) -> str:
    lines = [
        f"{info['path']}: {info['samples']} samples in {info['shards']} shards "
        f"({info['shard_bytes'] / 1e6:.1f} MB, {info['seconds']:.1f} s of clips)"
    ]
    lines.append(f"  files per sample: {info['extensions']}")
    if not info["shards"]:
        lines.append("  WARNING: no shards found")
    if info.get("shards_without_index"):
        lines.append(f"  {info['shards_without_index']} shards have no index: counted from their tar headers")
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
        if st.get("shard_pattern"):
            lines.append(f"  shards: {st['shard_pattern']}")
        lines.append(f"  sync scorer: {st['sync_scorer']}")
        lines.append("  stages: " + ", ".join(f"{k} {v}" for k, v in (st.get("stages") or {}).items()))
        for code, count in (st.get("rejects_by_code") or {}).items():
            lines.append(f"    reject {code}: {count}")
    if "verified" in info:
        lines.append(f"  verified: read {info['verified']['samples']} samples, {info['duplicate_keys']} duplicate keys")
    for problem in info.get("problems", []):
        lines.append(f"  WARNING: {problem}")
    return "\n".join(lines)
