"""The run's metrics log: ``RUN/metrics.jsonl`` always, TensorBoard scalars when enabled.

Written by rank 0 only. On ``--resume`` the records a killed run logged after its last
checkpoint are dropped first, so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


class MetricsLog:
    """JSONL (always) and TensorBoard (optional) metrics; a no-op where ``enabled`` is false."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.fh = open(run_dir / "metrics.jsonl", "a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception as exc:  # tensorboard is optional at run time
                print(f"[avf-train] tensorboard disabled: {exc}", file=sys.stderr)

    def write(self, record: dict[str, Any]) -> None:
        if self.fh is None:
            return
        safe = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.fh.write(json.dumps(safe) + "\n")  # strict JSON: inf/nan become null
        self.fh.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.fh:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from (a killed run logged past its last
    save), so metrics.jsonl reads like one uninterrupted run."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` for the console's ETA."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
