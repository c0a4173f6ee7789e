"""The output folder of ``avf-data build``/``import``/``sync``: its layout, claim, lock and writes.

Layout (version 2)::

    DIR/.avf-data              marker: this folder is an avf-data output (layout version)
    DIR/.avf-data.lock         held (flock) while a command writes here
    DIR/config.yaml            the configuration of the last build run
    DIR/build.jsonl            the build's commit log (append-only; see avf_data.store.build_store)
    DIR/state.json             checkpoint of that log: shard packing state, for resume without
                               reading the whole log
    DIR/done-ids.u64           ids of finished inputs, 8 bytes each (what resume skips)
    DIR/segments/<task>.tar    a finished task's clips, waiting to be packed into shards
    DIR/shards/shard-NNNNNN.tar  WebDataset shards of ~output.shard_size bytes, numbered
                               without gaps (``shard-{000000..000123}.tar``), each with its
                               ``.idx.json`` (sample count and offsets)
    DIR/sync.jsonl             the log of ``avf-data sync``: one line per scored shard
    DIR/sync/shard-NNNNNN.json its verdicts on that shard's clips
    DIR/manifest.jsonl, rejects.jsonl, stats.json, report.md, contact_sheet.png
    DIR/thumbs/                the few pictures the report shows

A command marks its folder with ``.avf-data`` on first use; a later command into the same folder
resumes. A non-empty folder without the marker is refused, because the clean-up of a resumed
run must never touch files someone else put there, and only names the store itself makes are
ever deleted.

``.avf-data.lock`` holds an exclusive ``flock`` for the whole command, so a second build into
the same folder is refused at once with the first one's PID. The kernel drops the lock when its
process dies (also on kill -9), so a stale lock file never blocks a rerun.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
from pathlib import Path

from ..tars import fsync_dir

LAYOUT = 2
MARKER = ".avf-data"
LOCK = ".avf-data.lock"
SHARD_PREFIX = "shard-"

# what a command writes at the top of its folder (a folder holding only these is ours)
OWN_FILES = {
    "build.jsonl",
    "sync.jsonl",
    "state.json",
    "done-ids.u64",
    "manifest.jsonl",
    "rejects.jsonl",
    "stats.json",
    "report.md",
    "contact_sheet.png",
    ".report.json",
    "config.yaml",
    "classes.json",
    MARKER,
    LOCK,
}
OWN_FOLDERS = {"shards", "segments", "thumbs", "sync", "demo-inputs"}
# the only names the store ever deletes in its folders
SEGMENT_NAME = re.compile(r"^[0-9a-f]{16}\.tar$")
THUMB_NAME = re.compile(r"^(r[0-9a-f]{16}|[0-9a-f]{16}_\d{4,})\.jpg$")


class OutputFolderError(ValueError):
    """The output folder cannot be used; the message says why (a usage error, exit 2)."""


class OutputFolder:
    """The paths of one output folder (nothing is created by making one)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = root = Path(root)
        self.marker = root / MARKER
        self.lock_file = root / LOCK
        self.config = root / "config.yaml"
        self.build_log = root / "build.jsonl"
        self.sync_log = root / "sync.jsonl"
        self.state = root / "state.json"
        self.done_ids = root / "done-ids.u64"
        self.manifest = root / "manifest.jsonl"
        self.rejects = root / "rejects.jsonl"
        self.stats = root / "stats.json"
        self.report = root / "report.md"
        self.report_data = root / ".report.json"
        self.contact_sheet = root / "contact_sheet.png"
        self.classes = root / "classes.json"
        self.shards = root / "shards"
        self.segments = root / "segments"
        self.thumbs = root / "thumbs"
        self.sync_decisions = root / "sync"

    def __repr__(self) -> str:
        return f"OutputFolder({str(self.root)!r})"

    @staticmethod
    def shard_name(number: int) -> str:
        """Relative path of shard ``number`` (as manifest rows and logs name it)."""
        return f"shards/{SHARD_PREFIX}{number:06d}.tar"

    def shard(self, number: int) -> Path:
        return self.root / self.shard_name(number)

    def part(self, number: int) -> Path:
        """Shard ``number`` while it is being filled (hidden from ``*.tar`` globs)."""
        return self.root / (self.shard_name(number) + ".part")

    def segment(self, task_id: str) -> Path:
        return self.segments / f"{task_id}.tar"

    def decisions(self, shard: str) -> Path:
        """The sync pass's verdicts on the clips of ``shard`` (``shards/shard-NNNNNN.tar``)."""
        return self.sync_decisions / (Path(shard).name[: -len(".tar")] + ".json")

    def thumb(self, name: str) -> Path:
        return self.thumbs / f"{name}.jpg"

    @staticmethod
    def shard_pattern(count: int) -> str:
        """The WebDataset brace pattern of ``count`` shards, relative to the folder."""
        if count <= 1:
            return f"shards/{SHARD_PREFIX}000000.tar" if count == 1 else f"shards/{SHARD_PREFIX}*.tar"
        return f"shards/{SHARD_PREFIX}{{000000..{count - 1:06d}}}.tar"


def _marker(out: Path) -> dict | None:
    try:
        data = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else {}


def _is_ours(out: Path) -> bool:
    if (out / MARKER).exists():
        return True
    names = {p.name for p in out.iterdir()}
    return names <= OWN_FILES | OWN_FOLDERS


def check_out(out_dir: str | os.PathLike) -> Path:
    """Whether ``out_dir`` may be used (see module doc); changes nothing."""
    text = os.fspath(out_dir)
    if not text.strip():
        raise OutputFolderError("--out is empty; name an output folder")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {text!r} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if not _is_ours(out):
        raise OutputFolderError(
            f"--out {text!r} is not empty and is not an avf-data output folder "
            "(no .avf-data marker); choose a new or empty folder"
        )
    marker = _marker(out)
    if (out / "done.jsonl").exists() and (marker is None or int(marker.get("layout", 1)) < LAYOUT):
        raise OutputFolderError(
            f"--out {text!r} was written by an earlier avf-data (output layout 1: done.jsonl and one shard "
            "set per task); this version packs shards by size and cannot continue it: use a new folder"
        )
    return out


def claim(out_dir: str | os.PathLike, kind: str = "build") -> OutputFolder:
    """Check and mark ``out_dir`` as an avf-data output folder (created if missing)."""
    out = check_out(out_dir)
    text = os.fspath(out_dir)
    try:
        for sub in ("shards", "segments", "thumbs"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        if not (out / MARKER).exists():
            (out / MARKER).write_text(
                json.dumps({"tool": "avf-data", "kind": kind, "layout": LAYOUT}) + "\n", encoding="utf-8"
            )
    except OSError as exc:
        raise OutputFolderError(f"--out {text!r} cannot be written: {exc.strerror or exc}") from None
    return OutputFolder(out)


class FolderLock:
    """An exclusive lock on an output folder for the duration of a command (see module doc)."""

    def __init__(self, folder: OutputFolder | Path) -> None:
        root = folder.root if isinstance(folder, OutputFolder) else Path(folder)
        self.path = root / LOCK
        self.fh = None

    def __enter__(self) -> FolderLock:
        try:
            fh = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise OutputFolderError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise OutputFolderError(
                f"another avf-data run ({holder}) is writing to {self.path.parent}; "
                "wait for it to finish or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self.fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.seek(0)
            self.fh.truncate()
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


def write_atomic(path: Path, data: str | bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never a
    half-written one; ``durable`` also fsyncs the file and its folder (checkpoints)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
