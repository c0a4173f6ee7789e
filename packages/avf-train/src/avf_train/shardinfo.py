"""What a set of shards holds, read before any loader worker starts.

Training used to find out about its data at the first batch: too few clips for the batch size,
unlabelled shards or a label outside the label map surfaced after the workers had started (tens
of seconds in) as a worker traceback. The shards' indices (sample counts) and, for labelled
stages, their small ``.json`` members answer those questions up front, with the numbers, and
tell which label map (``classes``) the shards were imported with.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avf_data.labels import LabelSpace
from avf_data.shards import iter_raw_samples, shard_counts

from .errors import DataError


@dataclass
class ShardInfo:
    """Counts per shard and, when metadata was read, what the clips say about their labels."""

    paths: list[str]
    counts: list[int]
    with_meta: bool = False
    label_maps: Counter[tuple[str, ...]] = field(default_factory=Counter)  # 'classes' carried -> clips
    protocols: Counter[str] = field(default_factory=Counter)
    labels: Counter[int] = field(default_factory=Counter)
    label_names: Counter[str] = field(default_factory=Counter)
    named_only: int = 0  # clips with a label_name but no integer label
    unnamed: int = 0  # clips with an integer label but no label_name
    unlabelled: list[str] = field(default_factory=list)  # "key in shard" of clips with no label at all
    target_sizes: Counter[int] = field(default_factory=Counter)
    no_targets: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts)

    def where(self) -> str:
        first = self.paths[0] if self.paths else "?"
        return first if len(self.paths) == 1 else f"{len(self.paths)} shards ({first}, ...)"

    def label_space(self) -> LabelSpace | None:
        """The shards' label map: carried by every clip, else ``classes.json`` beside/above the shards.

        Raises :class:`DataError` when the shards mix maps (a glob over two imports numbered
        differently), which would silently give one index two meanings.
        """
        if len(self.label_maps) > 1:
            parts = "; ".join(f"{list(m)} ({n} clips)" for m, n in self.label_maps.most_common())
            raise DataError(
                f"{self.where()} mix label maps: {parts}; import every part with the same --protocol / --classes"
            )
        if self.label_maps:
            ((classes, carried),) = self.label_maps.items()
            if carried < self.total:
                raise DataError(
                    f"{self.where()}: {carried} clips carry the label map {list(classes)}, "
                    f"{self.total - carried} carry none; re-import them together"
                )
            protocol = self.protocols.most_common(1)[0][0] if len(self.protocols) == 1 else ""
            return LabelSpace(protocol or "shards", classes, protocol=protocol, source="the clips' metadata")
        found: dict[tuple[str, ...], str] = {}
        protocol = ""
        for folder in sorted({Path(p).parent for p in self.paths}):
            for candidate in (folder / "classes.json", folder.parent / "classes.json"):
                if candidate.is_file():
                    data = json.loads(candidate.read_text(encoding="utf-8"))
                    names = data.get("classes") if isinstance(data, dict) else None
                    if isinstance(names, list):
                        found.setdefault(tuple(str(n) for n in names), str(candidate))
                        protocol = str(data.get("protocol") or "")
                    break
        if len(found) > 1:
            raise DataError(
                "the shards' classes.json files disagree: "
                + "; ".join(f"{path}: {list(m)}" for m, path in found.items())
            )
        if found:
            ((classes, path),) = found.items()
            return LabelSpace(protocol or "shards", classes, protocol=protocol, source=path)
        return None


def scan_shards(paths: list[str], read_meta: bool = False) -> ShardInfo:
    """Count the samples of every shard; with ``read_meta`` also read their json.

    Counts come from the index next to each shard (or the build's manifest), so a corpus on
    object storage is not downloaded to be counted; ``read_meta`` reads the ``.json`` and
    ``.cls`` members (a few hundred bytes per clip; local shards seek over the media, remote
    ones stream past it).
    """
    info = ShardInfo(paths=list(paths), counts=[], with_meta=read_meta)
    if not read_meta:
        try:
            info.counts = shard_counts(paths)
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"cannot read shards: {exc}") from None
        return info
    for path in paths:
        keys: dict[str, dict[str, Any]] = {}
        try:
            for sample in iter_raw_samples([path], exts=("json", "cls")):
                entry = keys.setdefault(sample["__key__"], {})
                if "json" in sample:
                    try:
                        entry["meta"] = json.loads(sample["json"])
                    except json.JSONDecodeError:
                        entry["meta"] = {}
                if "cls" in sample:
                    entry["cls"] = sample["cls"].decode(errors="replace").strip()
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"cannot read shard {path}: {exc}") from None
        info.counts.append(len(keys))
        for key, entry in keys.items():
            _note(info, key, path, entry)
    return info


def _note(info: ShardInfo, key: str, path: str, entry: dict[str, Any]) -> None:
    meta = entry.get("meta") or {}
    label = meta.get("label")
    if label is None and entry.get("cls", "").lstrip("-").isdigit():
        label = int(entry["cls"])
    if isinstance(meta.get("classes"), list):
        info.label_maps[tuple(str(c) for c in meta["classes"])] += 1
        if meta.get("protocol"):
            info.protocols[str(meta["protocol"])] += 1
    if label is not None:
        info.labels[int(label)] += 1
    if meta.get("label_name") is not None:
        info.label_names[str(meta["label_name"])] += 1
        if label is None:
            info.named_only += 1
    elif label is not None:
        info.unnamed += 1
    if label is None and meta.get("label_name") is None:
        info.unlabelled.append(f"{key} in {path}")
    targets = meta.get("targets")
    if isinstance(targets, list):
        info.target_sizes[len(targets)] += 1
    else:
        info.no_targets += 1
