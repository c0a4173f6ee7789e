"""Section ``loader``: a short real pre-training run (``avf-train pretrain``) from the demo shards
with the real loader, and its clips/s.

The trainer logs clips/s per ``run.log_every`` steps in ``RUN/metrics.jsonl``; the first window
holds the start (loader workers, first batches, warm-up), so the end-to-end figure is the median
of the windows after it. The report sets it against the step-only figure of the same model and
batch (section ``step``, eager): below 0.9 of it, training on this machine waits for data or for
the trainer's own per-step work (the loss read back each step, the gradient norm).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import append_record, run_section, section_args

HERE = Path(__file__).resolve().parent
# ``avf-train`` itself (its ``main``), after the same xformers probe as the step section: an
# xformers whose kernels fail here would otherwise fail the run's first step.
TRAIN = (
    "import sys; sys.path.insert(0, sys.argv[1]); from common import guard_attention; "
    "why = guard_attention(sys.argv[2]); print('attention:', why or 'as resolved', flush=True); "
    "from avf_train.cli import main; sys.exit(main(sys.argv[3:]))"
)


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="avfmae_pp_base")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds the training run may take")


def main() -> int:
    args = section_args(__doc__, _extra)
    config = {"model": args.model, "batch": args.batch, "workers": args.workers, "precision": args.precision}

    def body() -> None:
        ready = json.loads((args.work / "assets.json").read_text())
        run_dir = args.work / "pretrain-run"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "-c", TRAIN, str(HERE), args.device]
        cmd += ["pretrain", "--data", ready["shards"], "--out", str(run_dir)]
        cmd += ["--model", args.model, "--batch-size", str(args.batch), "--num-workers", str(args.workers)]
        cmd += ["--max-steps", str(args.steps), "--device", args.device, "--precision", args.precision]
        cmd += ["--set", f"run.log_every={args.log_every}", "--set", "run.tensorboard=false"]
        print(" ".join(cmd), flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, timeout=args.timeout, stdout=sys.stdout, stderr=sys.stderr)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"avf-train pretrain exited with status {proc.returncode} (its output is in run.log)")
        windows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rates = [w["clips_per_s"] for w in windows]
        steady = rates[1:] or rates
        append_record(
            args.out,
            {
                "section": "loader",
                **config,
                "status": "ok",
                "device": args.device,
                "steps": args.steps,
                "log_every": args.log_every,
                "window_clips_per_s": [round(r, 1) for r in rates],
                "e2e_clips_per_s": round(statistics.median(steady), 2),
                "final_loss": round(windows[-1]["loss"], 4) if windows else None,
                "wall_s": round(wall, 1),
            },
        )

    return run_section("loader", body, args.out, config)


if __name__ == "__main__":
    raise SystemExit(main())
