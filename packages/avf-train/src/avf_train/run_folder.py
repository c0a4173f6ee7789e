"""Is ``--out`` a place a run can be written? Asked once, before any shard is read or worker started.

Without these checks an ``--out`` under a regular file or on a read-only file system failed with
a traceback when the first file was written (after the data checks, sometimes after the first
steps), and an ``--out`` naming a folder of unrelated files was written into, mixing a run's
config.yaml, checkpoints and metrics with someone's data. Each case is now one user error, and
nothing is created: writability is probed with a folder that is removed again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import StageError

RUN_MARKERS = ("config.yaml", "checkpoint")  # what avf-train writes first: a folder holding one is a run


def check_new_run(run_dir: Path) -> None:
    """``--out`` for a fresh run: a new or empty folder, or a run that never saved a checkpoint."""
    if (run_dir / "checkpoint").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out")
    if run_dir.is_dir() and not any((run_dir / name).exists() for name in RUN_MARKERS):
        entries = sorted(p.name for p in run_dir.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise StageError(
                f"--out {run_dir} is a folder of other files ({shown}), not a run (no config.yaml or "
                "checkpoint); choose a new or empty folder"
            )
    check_writable(run_dir)


def check_writable(run_dir: Path) -> None:
    """Refuse an ``--out`` that cannot be created or written, leaving nothing behind.

    The nearest existing folder of the path is what decides: it must be a folder (not a file),
    on a writable file system, and accept a new sub-folder (made and removed at once), which is
    the one test that also holds for root, for whom permission bits say nothing.
    """
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == run_dir else f"is under {existing}, which is a file"
        raise StageError(f"--out {run_dir} {what}; --out is the run's folder")
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise StageError(f"cannot write --out {run_dir}: {existing} is on a read-only file system")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".avf-train-probe-", dir=existing))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StageError(f"cannot write --out {run_dir}: {existing} does not take new folders ({reason})") from None
