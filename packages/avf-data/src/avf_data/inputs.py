"""Finding a build's inputs: folders, files and list files, at corpus scale.

:func:`iter_input_paths` expands the INPUT arguments lazily. :class:`InputPlan` is what the
build driver uses: it walks the inputs once, writes their paths to an unnamed scratch file and
keeps 17 bytes per input (a hash of the real path, to see the same file reached twice; whether
the input is finished already), so 1.36 M inputs cost ~23 MB of driver memory instead of
~300 MB of path strings, and the pending ones are then read back from the scratch file in
order as the engine asks for work.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .media import path_text
from .store.log import DoneSet

VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".wmv", ".3gp"}
LIST_EXTS = {".txt", ".lst", ".list"}
MAX_NOTES = 1000  # notes about skipped inputs kept for the report (a corpus may have many)


def input_id(path: str | os.PathLike) -> str:
    """Stable id of an input: a hash of its absolute path (bytes, so any encoding works)."""
    raw = os.fsencode(os.path.abspath(os.fspath(path)))
    return hashlib.sha1(raw).hexdigest()[:16]


def iter_input_paths(
    items: Iterable[str | os.PathLike], notes: list[str], skipped: Counter[str] | None = None
) -> Iterator[str]:
    """Absolute input paths from INPUT arguments: video files, folders (recursive, by
    extension, sorted) and text files listing one path per line (relative paths are relative
    to the list file; ``#`` comments). ``notes`` collects what was skipped and why (unreadable
    subfolders, folders without videos); ``skipped`` counts what folders held besides videos
    (other files by extension, hidden entries, folders named like videos). Duplicates are not
    removed here."""
    skipped = Counter() if skipped is None else skipped
    for item in items:
        p = os.fspath(item)
        if os.path.isdir(p):
            found = 0
            for path in _walk_sorted(p, notes, skipped):
                found += 1
                yield os.path.abspath(path)
            if not found:
                what = "a folder named like a video" if Path(p).suffix.lower() in VIDEO_EXTS else "a folder"
                notes.append(f"{path_text(p)}: {what} with no video files ({', '.join(sorted(VIDEO_EXTS))})")
        elif Path(p).suffix.lower() in LIST_EXTS and os.path.isfile(p):
            base = os.path.dirname(os.path.abspath(p))
            with open(p, "rb") as fh:
                for raw in fh:
                    line = os.fsdecode(raw.strip())
                    if line and not line.startswith("#"):
                        yield os.path.abspath(line if os.path.isabs(line) else os.path.join(base, line))
        else:
            yield os.path.abspath(p)  # a missing or unreadable file still becomes a reject row


def _walk_sorted(top: str, notes: list[str], skipped: Counter[str]) -> Iterator[str]:
    """Video files under ``top`` in the order of their sorted full paths, one folder listed at
    a time (hidden files and folders skipped and counted, unreadable folders noted)."""
    stack: list[Iterator[tuple[str, str, bool]]] = []

    def listing(folder: str) -> Iterator[tuple[str, str, bool]]:
        try:
            with os.scandir(folder) as it:
                entries = [(e.name, e.path, e.is_dir()) for e in it]
        except OSError as exc:
            if len(notes) < MAX_NOTES:
                notes.append(f"{path_text(exc.filename or folder)}: folder skipped ({exc.strerror or exc})")
            return iter(())
        skipped["hidden"] += sum(1 for name, _, _ in entries if name.startswith("."))
        entries = [e for e in entries if not e[0].startswith(".")]
        skipped["folder named like a video"] += sum(
            1 for n, _, d in entries if d and Path(n).suffix.lower() in VIDEO_EXTS
        )
        # a folder sorts as "name/", so the order is that of sorted full paths
        return iter(sorted(entries, key=lambda e: e[0] + "/" if e[2] else e[0]))

    stack.append(listing(top))
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        name, path, is_dir = entry
        if is_dir:
            stack.append(listing(path))
        elif Path(name).suffix.lower() in VIDEO_EXTS:
            yield path
        else:
            skipped[Path(name).suffix.lower() or "no extension"] += 1


class _RealPaths:
    """``os.path.realpath`` of many files, resolving each folder once (a file is looked at
    only when it is itself a link)."""

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        folder, name = os.path.split(path)
        real = self._dirs.get(folder)
        if real is None:
            if len(self._dirs) > 4096:
                self._dirs.clear()
            real = self._dirs[folder] = os.path.realpath(folder)
        full = os.path.join(real, name)
        return os.path.realpath(full) if os.path.islink(full) else full


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(os.fsencode(text), digest_size=8).digest(), "little")


class InputPlan:
    """The inputs of one run (see module doc): counts, notes, then the pending paths in order."""

    def __init__(self, items: Iterable[str | os.PathLike], done: DoneSet, *, expand: bool = True) -> None:
        self.notes: list[str] = []
        self.skipped: Counter[str] = Counter()
        self._spill = tempfile.TemporaryFile(prefix="avf-inputs-")
        real = _RealPaths()
        reals, ids = array("Q"), array("Q")
        paths = (
            iter_input_paths(items, self.notes, self.skipped)
            if expand
            else (os.path.abspath(os.fspath(p)) for p in items)
        )
        for path in paths:
            raw = os.fsencode(path)
            self._spill.write(raw + b"\0")
            reals.append(_hash64(real(path)))
            ids.append(int(hashlib.sha1(raw).hexdigest()[:16], 16))
        self.found = len(reals)
        # the same file reached twice (a symlink, a folder given twice): the first one counts
        self._dup_of: dict[int, int] = {}
        if self.found > 1:
            values = np.frombuffer(reals, dtype=np.uint64)
            order = np.argsort(values, kind="stable")
            ordered = values[order]
            starts = np.r_[True, ordered[1:] != ordered[:-1]]
            if not starts.all():
                run_first = order[np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))]
                self._dup_of = dict(zip(order[~starts].tolist(), run_first[~starts].tolist(), strict=True))
            del values, order, ordered, starts
        del reals
        self._done = done.contains_many(np.frombuffer(ids, dtype=np.uint64)) if self.found else np.zeros(0, bool)
        del ids
        dups = np.zeros(self.found, bool)
        if self._dup_of:
            dups[list(self._dup_of)] = True
        self.given = self.found - len(self._dup_of)
        note = skipped_note(self.skipped)
        if note:
            self.notes.insert(0, note)
        self.already_done = int((self._done & ~dups).sum())
        self.pending_count = self.given - self.already_done

    def pending(self) -> Iterator[str]:
        """The inputs still to curate, in the order they were found (notes duplicates)."""
        wanted = set(self._dup_of.values())
        firsts: dict[int, str] = {}
        for i, path in enumerate(self._read()):
            if i in wanted:
                firsts[i] = path
            first = self._dup_of.get(i)
            if first is not None:
                if firsts.get(first) != path and len(self.notes) < MAX_NOTES:
                    self.notes.append(
                        f"{path_text(path)}: same file as {path_text(firsts.get(first, '?'))} (kept once)"
                    )
                continue
            if not self._done[i]:
                yield path

    def _read(self) -> Iterator[str]:
        self._spill.seek(0)
        rest = b""
        while True:
            block = self._spill.read(1 << 20)
            if not block:
                break
            parts = (rest + block).split(b"\0")
            rest = parts.pop()
            for raw in parts:
                yield os.fsdecode(raw)

    def close(self) -> None:
        self._spill.close()


def skipped_note(skipped: Counter[str]) -> str | None:
    """One line on what the input folders held besides videos (None: nothing)."""
    special = ("hidden", "folder named like a video")
    files = sum(n for k, n in skipped.items() if k not in special)
    parts = []
    if files:
        kinds = ", ".join(f"{k} {n}" for k, n in skipped.most_common() if k not in special and n)
        parts.append(f"{files} {'file that is not a video' if files == 1 else 'files that are not videos'} ({kinds})")
    if n := skipped["hidden"]:
        parts.append(f"{n} hidden {'file or folder' if n == 1 else 'files or folders'}")
    if n := skipped["folder named like a video"]:
        parts.append(f"{n} {'folder' if n == 1 else 'folders'} named like a video (searched as a folder)")
    return "skipped in the input folders: " + "; ".join(parts) if parts else None


def resolve_inputs(items: list[str | os.PathLike], notes: list[str] | None = None) -> list[str]:
    """The inputs as a list (small runs, tools): :class:`InputPlan` without a done set."""
    plan = InputPlan(items, DoneSet(np.zeros(0, np.uint64)))
    try:
        out = list(plan.pending())
    finally:
        plan.close()
    if notes is not None:
        notes.extend(plan.notes)
    return out
