"""Processes for the kill -9 tests (a module of its own: the pool's workers import it by name,
and test_resume and test_engines both use it): a worker that spins forever and the live
processes of a process group (the CPU load is the suite's ``cpu_load`` fixture)."""

from __future__ import annotations

import os
import time
from pathlib import Path


class Spinner:
    """A pool worker whose jobs never end: it notes its pid in ``folder`` and spins in Python
    (holding the GIL between switches, as a busy curation worker does)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def __call__(self, job: int) -> int:
        (self.folder / f"{os.getpid()}.pid").write_text(str(job))
        while True:
            sum(range(10_000))


def live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are not zombies (Linux /proc)."""
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(entry))
    return live


def seconds_until_gone(pgid: int, limit: float) -> tuple[float, list[int]]:
    """Wait up to ``limit`` s for every process of group ``pgid`` to end (a killed leader not
    yet reaped is a zombie, which counts as gone); returns the seconds it took and what is left."""
    start = time.monotonic()
    while True:
        left = live_group_members(pgid)
        took = time.monotonic() - start
        if not left or took > limit:
            return took, left
        time.sleep(0.02)
