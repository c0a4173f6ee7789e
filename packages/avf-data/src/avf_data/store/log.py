"""Append-only logs of the output folder: JSON lines that commit work, and the done-id file.

A line is appended and fsynced in one write, so after a crash (kill -9, power loss) the log
holds whole lines plus at most one torn last line, which :meth:`JsonLog.repair` drops: the work
it would have committed is simply redone. Readers stream the log line by line (memory does not
grow with its length) and can re-read one line by its byte offset.

:class:`DoneIds` keeps the ids of finished inputs as 8-byte integers in commit order: what a
resumed build must skip, without reading the log. It is derived from the log (each task line
lists its inputs), so it may lag the log after a crash; the store re-derives the tail.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


class JsonLog:
    """One JSON object per line, appended durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def repair(self) -> None:
        """Drop a torn trailing line (a crash while appending) so that appends start clean."""
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(max(0, size - 1))
            if fh.read(1) == b"\n":
                return
            # find the last newline without reading the whole file
            pos, cut = size, 0
            while pos > 0:
                step = min(1 << 16, pos)
                pos -= step
                fh.seek(pos)
                block = fh.read(step)
                i = block.rfind(b"\n")
                if i >= 0:
                    cut = pos + i + 1
                    break
        with open(self.path, "r+b") as fh:
            fh.truncate(cut)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, record: dict[str, Any]) -> int:
        """Append ``record`` (fsynced); returns the byte offset of its line."""
        if self._fh is None:
            self._fh = open(self.path, "ab")
        offset = self._fh.tell()
        self._fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return offset

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def iter_from(self, offset: int = 0, end: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(offset, record)`` for every whole line from byte ``offset`` (to ``end``)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            pos = offset
            for raw in fh:
                if end is not None and pos >= end:
                    break
                here, pos = pos, pos + len(raw)
                if not raw.endswith(b"\n"):
                    break  # torn: not committed
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield here, record

    def read_at(self, offset: int) -> dict[str, Any]:
        """The record whose line starts at ``offset``."""
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return json.loads(fh.readline())


def id_number(input_id: str) -> int:
    """An input id as the 64-bit number :class:`DoneIds` stores (ids are 16 hex digits; the
    importer's pseudo-inputs are hashed)."""
    try:
        if len(input_id) == 16:
            return int(input_id, 16)
    except ValueError:
        pass
    return int(hashlib.sha1(input_id.encode("utf-8")).hexdigest()[:16], 16)


class DoneIds:
    """Ids of finished inputs, 8 bytes each, in commit order (see module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sorted: np.ndarray | None = None

    def count(self) -> int:
        try:
            return self.path.stat().st_size // 8
        except FileNotFoundError:
            return 0

    def truncate(self, count: int) -> None:
        with open(self.path, "ab") as fh:
            fh.truncate(count * 8)

    def append(self, input_ids: Iterable[str]) -> None:
        values = np.array([id_number(i) for i in input_ids], dtype="<u8")
        if len(values):
            with open(self.path, "ab") as fh:
                fh.write(values.tobytes())
            self._sorted = None

    def sync(self) -> None:
        """fsync the file (before a checkpoint records its length)."""
        if self.path.exists():
            with open(self.path, "rb+") as fh:
                os.fsync(fh.fileno())

    def load(self) -> DoneSet:
        """A membership test over the ids as they are now (sorted, 8 bytes per id)."""
        values = np.fromfile(self.path, dtype="<u8") if self.path.exists() else np.zeros(0, "<u8")
        values = values[: self.count()]
        values.sort()
        return DoneSet(values)


class DoneSet:
    """Sorted input ids: ``contains`` is a binary search."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __len__(self) -> int:
        return int(len(self.values))

    def contains(self, input_id: str) -> bool:
        v = np.uint64(id_number(input_id))
        i = int(np.searchsorted(self.values, v))
        return i < len(self.values) and self.values[i] == v

    def contains_many(self, numbers: np.ndarray) -> np.ndarray:
        """Membership of many ids (as numbers) at once."""
        if not len(self.values):
            return np.zeros(len(numbers), bool)
        i = np.searchsorted(self.values, numbers)
        i[i >= len(self.values)] = 0
        return self.values[i] == numbers
