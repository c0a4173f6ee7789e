"""Command-line flags the avf-train tests share: the tiny model, one CPU process, fp32, no TensorBoard.

A plain module beside the tests (pytest puts this folder on ``sys.path``), so that every test file
starts its runs the same way and a change of flag names is made once.
"""

from __future__ import annotations

TINY_MODEL = ["--model", "tiny"]
# one process, no loader workers, fp32 (bf16 on a CPU is slow and not what the checks are about)
ONE_CPU = ["--num-workers", "0", "--precision", "fp32", "--set", "run.tensorboard=false"]
# a run of two clips per step that logs every step: enough for a loss curve
SMALL = [*ONE_CPU, "--batch-size", "2", "--set", "run.log_every=1"]
