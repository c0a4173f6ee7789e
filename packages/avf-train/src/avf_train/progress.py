"""What a training run tells its user while it runs and when it ends (rank 0 only).

On a terminal: a progress bar (step, epoch, loss, lr, clips/s, ETA) that moves every step.
Elsewhere (a log file, a cluster job): plain lines, at the first step, every ``log_every`` steps
and at least every ``LINE_EVERY_S`` seconds, so a slow model never sits silent. Saved
checkpoints get a line of their own, and the run ends with a few human lines; the same summary
goes to ``RUN/summary.json`` for scripts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .metrics import format_duration

LINE_EVERY_S = 30.0


class Progress:
    """Step-by-step progress of one run; a no-op on ranks other than 0."""

    def __init__(
        self, stage: str, enabled: bool, start: int, stop: int, log_every: int, stream: TextIO | None = None
    ) -> None:
        self.prefix = f"[avf-train {stage}]"
        self.enabled, self.start, self.stop, self.log_every = enabled, start, stop, max(1, log_every)
        self.stream = stream or sys.stderr
        self.t0 = self.t_line = time.perf_counter()
        self.bar = None
        if enabled and stop > start and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=stop, initial=start, unit="step", desc=stage, file=self.stream, dynamic_ncols=True, leave=True
            )

    def log(self, message: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"{self.prefix} {message}", file=sys.stdout)
        else:
            print(f"{self.prefix} {message}", flush=True)

    def due(self, step: int) -> bool:
        """Whether ``step`` gets a metrics record (every ``log_every`` steps and the last)."""
        return step % self.log_every == 0 or step == self.stop

    def step(self, step: int, epoch: float, loss: float, lr: float, clips_per_s: float) -> None:
        """After each optimizer step: move the bar, or print a line when one is due."""
        if not self.enabled:
            return
        now = time.perf_counter()
        eta = (now - self.t0) / max(step - self.start, 1) * (self.stop - step)
        if self.bar is not None:
            self.bar.set_postfix_str(f"ep {epoch:.2f} loss {loss:.4f} lr {lr:.3g} {clips_per_s:.1f} clips/s", False)
            self.bar.update(step - self.bar.n)
            return
        if step == self.start + 1 or self.due(step) or now - self.t_line >= LINE_EVERY_S:
            self.t_line = now
            self.log(
                f"step {step}/{self.stop} ep {epoch:.2f} loss {loss:.4f} lr {lr:.3g} "
                f"{clips_per_s:.1f} clips/s ETA {format_duration(eta)}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """``RUN/summary.json``: what the run did, for scripts (the console gets ``summary_lines``)."""
    path = run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The closing lines a person reads: what ran, how fast, how it ended, where things are."""
    lines = [
        f"done: {summary['steps_run']} steps ({summary['step']}/{summary['total_steps']} of the schedule) in "
        f"{format_duration(summary['seconds'])}, {summary['clips_per_s']:.1f} clips/s",
        f"loss: last {summary['last_loss']:.4f}, best {summary['best_loss']:.4f} (step {summary['best_step']})",
    ]
    if summary.get("eval"):
        scores = ", ".join(f"{k} {v:.4f}" for k, v in summary["eval"].items() if isinstance(v, float))
        lines.append(f"held-out ({summary['eval'].get('clips', '?')} clips): {scores}")
    where = f"run folder {summary['run_dir']}: checkpoint {summary['checkpoint']}, metrics.jsonl, summary.json"
    if summary.get("predictions"):
        where += f", {Path(summary['predictions']).name}"
    lines.append(where)
    return lines
