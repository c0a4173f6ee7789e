"""What a set of shards holds, read before any loader worker starts.

Training used to find out about its data at the first batch: too few clips for the batch size,
unlabelled shards or a label outside the label map surfaced after the workers had started (tens
of seconds in) as a worker traceback. The shards' indices (sample counts) and, for labelled
stages, their small ``.json`` members answer those questions up front, with the numbers, and
tell which label map (``classes``) the shards were imported with.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avf_data.labels import LabelSpace
from avf_data.shard_urls import kind, local_path
from avf_data.shards import iter_raw_samples, read_index, shard_counts

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
    check_members(info.paths)
    if not read_meta:
        try:
            info.counts = shard_counts(paths)
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"cannot read shards: {exc}") from None
        return info
    for path in paths:
        keys = _read_meta(path)
        info.counts.append(len(keys))
        for key, entry in keys.items():
            _note(info, key, path, entry)
    return info


def _read_meta(path: str) -> dict[str, dict[str, Any]]:
    """Each clip's json (``meta``; {} when it does not parse) and ``.cls`` text, by key."""
    keys: dict[str, dict[str, Any]] = {}
    try:
        for sample in iter_raw_samples([path], exts=("json", "cls")):
            entry = keys.setdefault(sample["__key__"], {})
            if "json" in sample:
                try:
                    entry["meta"] = json.loads(sample["json"])
                except ValueError:  # not JSON, or not UTF-8: the loader skips such a clip
                    entry["meta"] = {}
            if "cls" in sample:
                entry["cls"] = sample["cls"].decode(errors="replace").strip()
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot read shard {path}: {exc}") from None
    return keys


AVF_MEMBERS = ("json", "mp4")  # and wav or flac: what avf_data.shards.sample_meta needs of a clip


def check_members(paths: list[str]) -> None:
    """Refuse shards that hold no avf clip at all: no ``.json``, ``.mp4`` or audio members.

    Why here: the loader skips every such sample with a warning and the run then ends in "too
    few clips for the batch size", which says nothing about the shards. Every local shard is
    checked (its index, else its tar headers) and the first remote one (its index, if it has one:
    a remote shard is not downloaded for this).
    """
    remote_seen = False
    for path in paths:
        if kind(path) != "local":
            if remote_seen:
                continue
            remote_seen = True
        kinds = _member_kinds(path)
        if not kinds:
            continue  # unknown (or an empty shard, which the sample count reports)
        missing = [f".{ext}" for ext in AVF_MEMBERS if not kinds.get(ext)]
        if not kinds.get("wav") and not kinds.get("flac"):
            missing.append(".wav|.flac")
        if missing:
            found = " ".join(f".{ext}" for ext in sorted(kinds))
            raise DataError(
                f"{path} has no {', '.join(missing)} members: not avf-data shards? (members: {found}); "
                "make shards with `avf-data build` or `avf-data import`"
            )


def _member_kinds(path: str) -> Counter[str] | None:
    """Member extensions of a shard and how often each occurs: from its index, else (local shards)
    from its tar headers; None when that cannot be known without downloading it."""
    index = read_index(path)
    if index is not None and index.extensions:
        return Counter(index.extensions)
    if kind(path) != "local":
        return None
    kinds: Counter[str] = Counter()
    try:
        with tarfile.open(local_path(path)) as tar:
            for member in tar:
                if member.isfile():
                    kinds[Path(member.name).name.partition(".")[2]] += 1
    except (tarfile.TarError, OSError):
        return None  # reading the shard names the problem
    return kinds


def _note(info: ShardInfo, key: str, path: str, entry: dict[str, Any]) -> None:
    meta = entry.get("meta") or {}
    where = f"clip {key!r} in {path}"
    if not isinstance(meta, dict):
        raise DataError(f"{where}: its .json holds {type(meta).__name__}, not an object of clip metadata")
    label = clip_label(meta.get("label"), where)
    if label is None and entry.get("cls"):
        label = clip_label(entry["cls"], where, ".cls")
    classes = meta.get("classes") if isinstance(meta.get("classes"), list) else []
    for name in [meta.get("label_name"), meta.get("protocol"), *classes]:
        check_text(name, where)
    if isinstance(meta.get("classes"), list):
        info.label_maps[tuple(str(c) for c in meta["classes"])] += 1
        if meta.get("protocol"):
            info.protocols[str(meta["protocol"])] += 1
    if label is not None:
        info.labels[label] += 1
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


_INTEGER = re.compile(r"-?[0-9]+")


def clip_label(value: Any, where: str, member: str = "json 'label'") -> int | None:
    """A clip's integer label (None: it has none), or a DataError naming the clip.

    Why strict: ``int()`` crashes on NaN and text and silently truncates 1.5 to 1, a wrong class.
    Accepted: a JSON integer, an integral number (``2.0``), and for ``.cls`` members decimal text.
    """
    if value is None:
        return None
    if isinstance(value, str) and member == ".cls" and _INTEGER.fullmatch(value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise DataError(
        f"{where} has {member} {value!r}: a label is an integer class index; fix the shard or re-import "
        "it with `avf-data import`"
    )


def check_text(value: Any, where: str) -> None:
    """Refuse a label name with control or format characters (newlines, ESC, bidi overrides).

    Why: label names reach terminals, one-line errors, checkpoints and predictions.jsonl; an ANSI
    escape there rewrites the screen, a newline splits an error, a bidi override disguises a name.
    """
    if isinstance(value, str) and any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise DataError(f"{where} has the label name {value!r} with control characters; fix the shard's json")
