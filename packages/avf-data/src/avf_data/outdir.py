"""The output folder of a build: claim it, lock it, and clean up only what avf-data wrote.

A build marks its folder with ``.avf-data`` on first use. A later build into the same folder
resumes; a build into a non-empty folder without the marker is refused, because the rerun
clean-up (``*.tmp`` leftovers, shards no done-log line lists) must never touch files that
someone else put there. Only names the pipeline itself makes are cleaned up:
``shards/<16 hex>-<6 digits>.tar``, its ``.idx.json`` index, and either with ``.tmp``.

``.avf-data.lock`` holds an exclusive ``flock`` for the whole build, so a second build into
the same folder is refused at once with the first one's PID. The kernel drops the lock when
its process dies (also on kill -9), so a stale lock file never blocks a rerun.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
from pathlib import Path

MARKER = ".avf-data"
LOCK = ".avf-data.lock"
SHARD_NAME = re.compile(r"^[0-9a-f]{16}-\d{6}\.tar$")
INDEX_NAME = re.compile(r"^[0-9a-f]{16}-\d{6}\.idx\.json$")  # a shard's sample count (avf_data.shards)
TMP_NAME = re.compile(r"^[0-9a-f]{16}-\d{6}\.(tar|idx\.json)\.tmp$")
# files a build writes at the top of its folder (used to recognise folders of older versions)
OWN_FILES = {
    "done.jsonl",
    "manifest.jsonl",
    "rejects.jsonl",
    "stats.json",
    "report.md",
    "contact_sheet.png",
    "config.yaml",
    "classes.json",
    MARKER,
    LOCK,
}


class OutputFolderError(ValueError):
    """The output folder cannot be used; the message says why (a usage error, exit 2)."""


def _is_ours(out: Path) -> bool:
    if (out / MARKER).exists():
        return True
    # a folder written before the marker existed (or by the importer first): only our names
    names = {p.name for p in out.iterdir()}
    return names <= OWN_FILES | {"shards", "thumbs", "demo-inputs"}


def check_out(out_dir: str | os.PathLike) -> Path:
    """Whether ``out_dir`` may be used (see module doc); changes nothing."""
    text = os.fspath(out_dir)
    if not text.strip():
        raise OutputFolderError("--out is empty; name an output folder")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {text!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_ours(out):
        raise OutputFolderError(
            f"--out {text!r} is not empty and is not an avf-data output folder "
            "(no .avf-data marker); choose a new or empty folder"
        )
    return out


def claim(out_dir: str | os.PathLike, kind: str = "build") -> Path:
    """Check and mark ``out_dir`` as an avf-data output folder (created if missing)."""
    out = check_out(out_dir)
    text = os.fspath(out_dir)
    try:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        marker = out / MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"tool": "avf-data", "kind": kind}) + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputFolderError(f"--out {text!r} cannot be written: {exc.strerror or exc}") from None
    return out


class BuildLock:
    """An exclusive lock on an output folder for the duration of a build (see module doc)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        self.fh = None

    def __enter__(self) -> BuildLock:
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


def own_shards(out: Path) -> list[Path]:
    """Committed-looking shard files named as the pipeline names them."""
    folder = out / "shards"
    return sorted(p for p in folder.glob("*.tar") if SHARD_NAME.match(p.name)) if folder.is_dir() else []


def own_indexes(out: Path) -> list[Path]:
    """Shard index files named as the pipeline names them."""
    folder = out / "shards"
    return sorted(p for p in folder.glob("*.idx.json") if INDEX_NAME.match(p.name)) if folder.is_dir() else []


def own_tmp_files(out: Path) -> list[Path]:
    """``*.tar.tmp`` / ``*.idx.json.tmp`` leftovers named as the pipeline names them."""
    folder = out / "shards"
    return sorted(p for p in folder.glob("*.tmp") if TMP_NAME.match(p.name)) if folder.is_dir() else []
