"""Fold generators: subject-, session-independent and leave-one-subject-out folds from metadata.

Input is a metadata table (CSV) with one row per clip: a ``key`` column, the protocol's group
column (``subject`` or ``session``) and, for official splits, a ``fold`` column (dataset's
own fold number) or a ``split`` column (``train``/``val``/``test``).

Groups are cut **contiguously in natural sort order** (subject 2 before 10): with ``n``
groups and ``k`` folds every fold gets ``n // k`` groups and the last fold takes the rest.
That reproduces the HiCMAE preprocessing (e.g. CREMA-D: 18 actors per fold, 19 in fold 5;
RAVDESS: 4 actors per fold), which matters because published numbers depend on which actors
share a fold. Pass ``seed`` to shuffle the groups first instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .protocols.types import Protocol


@dataclass(frozen=True)
class Fold:
    """One train/test partition; ``test_groups`` names the held-out subjects or sessions."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    test_groups: tuple[str, ...] = ()


def natural_key(value: object) -> tuple[object, ...]:
    """Sort key that orders embedded numbers numerically: ``s2`` < ``s10``."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(value)))


def contiguous_groups(groups: Sequence[str], count: int, seed: int | None = None) -> list[list[str]]:
    """Cut sorted (or seeded-shuffled) groups into ``count`` chunks; the last takes the remainder."""
    ordered = sorted(set(groups), key=natural_key)
    if seed is not None:
        ordered = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    if len(ordered) < count:
        raise ValueError(f"{len(ordered)} groups cannot fill {count} folds")
    size = len(ordered) // count
    chunks = [ordered[i * size : (i + 1) * size] for i in range(count - 1)]
    return chunks + [ordered[(count - 1) * size :]]


def _require(metadata: pd.DataFrame, column: str, why: str) -> pd.Series:
    if column not in metadata.columns:
        raise ValueError(f"metadata has no {column!r} column, needed for {why}; columns: {', '.join(metadata.columns)}")
    return metadata[column].astype(str)


def make_folds(
    metadata: pd.DataFrame, protocol: Protocol, *, key_column: str = "key", seed: int | None = None
) -> list[Fold]:
    """Folds of ``protocol.folds`` over the rows of ``metadata``; keys are never shared across a split."""
    keys = _require(metadata, key_column, "clip ids")
    scheme = protocol.folds
    if scheme.scheme == "official":
        return _official(metadata, keys, protocol)
    groups = _require(metadata, scheme.group_column or "subject", f"{scheme.scheme}-independent folds")
    if scheme.scheme == "loso":
        chunks = [[g] for g in sorted(set(groups), key=natural_key)]
    else:
        chunks = contiguous_groups(groups.tolist(), scheme.count or 0, seed)
    folds = []
    for index, chunk in enumerate(chunks, start=1):
        held_out = groups.isin(chunk).to_numpy()
        folds.append(Fold(str(index), tuple(keys[~held_out]), tuple(keys[held_out]), tuple(chunk)))
    return folds


def _official(metadata: pd.DataFrame, keys: pd.Series, protocol: Protocol) -> list[Fold]:
    scheme = protocol.folds
    if (scheme.count or 1) > 1:
        fold_ids = _require(metadata, "fold", "the dataset's official folds")
        names = sorted(set(fold_ids), key=natural_key)
        if len(names) != scheme.count:
            raise ValueError(f"protocol {protocol.name} has {scheme.count} official folds, metadata lists {len(names)}")
        return [Fold(name, tuple(keys[fold_ids != name]), tuple(keys[fold_ids == name])) for name in names]
    split = _require(metadata, "split", "the official train/test split").str.lower()
    test = split == (scheme.test_split or "test")
    return [Fold("1", tuple(keys[split == "train"]), tuple(keys[test]))]


def label_ids(metadata: pd.DataFrame, protocol: Protocol, label_column: str = "label") -> pd.Series:
    """Raw labels -> class ids after the protocol's merges; dropped labels become ``<NA>``."""
    raw = _require(metadata, label_column, "class labels")
    return pd.Series([protocol.map_label(v) for v in raw], index=metadata.index, dtype="Int64")


def absolute_paths(metadata: pd.DataFrame, base: str | Path, column: str = "path") -> pd.DataFrame:
    """Relative video paths in ``column`` made absolute against ``base`` (the metadata's folder).

    The fold CSVs land in ``foldNN/``, one level below where relative paths were meant to be read
    from; absolute paths let ``avf-data import foldNN/train.csv`` find the videos unchanged.
    """
    if column not in metadata.columns:
        return metadata
    root = Path(base).resolve()
    out = metadata.copy()
    out[column] = [v if not v or Path(v).is_absolute() else str(root / v) for v in metadata[column].astype(str)]
    return out


def write_folds(
    metadata: pd.DataFrame, folds: Sequence[Fold], out_dir: str | Path, *, key_column: str = "key"
) -> list[Path]:
    """Write ``foldNN/train.csv`` and ``foldNN/test.csv`` (all metadata columns) per fold."""
    out = Path(out_dir)
    indexed = metadata.set_index(metadata[key_column].astype(str), drop=False)
    written = []
    for fold in folds:
        directory = out / f"fold{int(fold.name):02d}" if fold.name.isdigit() else out / f"fold_{fold.name}"
        directory.mkdir(parents=True, exist_ok=True)
        for part, keys in (("train", fold.train), ("test", fold.test)):
            path = directory / f"{part}.csv"
            indexed.loc[list(keys)].to_csv(path, index=False)
            written.append(path)
    return written
