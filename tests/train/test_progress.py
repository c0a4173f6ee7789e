"""What a training run says while it runs and when it ends: the bar on a terminal, plain lines in a
log, "saved checkpoint" lines, the warmup warning and the closing summary (and summary.json)."""

from __future__ import annotations

import io
import json

from run_args import SMALL, TINY_MODEL

from avf_train.cli import main
from avf_train.progress import Progress, summary_lines


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal(capsys):
    progress = Progress("pretrain", True, 0, 10, log_every=4, stream=io.StringIO())
    for step in range(1, 11):
        progress.step(step, step / 5, 1.0 / step, 1e-4, 12.5)
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    # the first step (nobody waits log_every steps to see the run is alive), every 4th, the last
    assert [line.split()[3] for line in lines] == ["1/10", "4/10", "8/10", "10/10"]
    assert lines[0].startswith("[avf-train pretrain] step 1/10 ep 0.20 loss 1.0000 lr 0.0001 12.5 clips/s ETA")


def test_a_bar_on_a_terminal_and_nothing_on_other_ranks(capsys):
    terminal = _Terminal()
    progress = Progress("finetune", True, 0, 3, log_every=1, stream=terminal)
    for step in range(1, 4):
        progress.step(step, step / 3, 0.5, 2e-4, 7.0)
    progress.close()
    drawn = terminal.getvalue()
    assert "3/3" in drawn and "loss 0.5000" in drawn and "clips/s" in drawn
    assert capsys.readouterr().out == ""  # the bar, not lines
    silent = Progress("finetune", False, 0, 3, log_every=1, stream=_Terminal())
    silent.step(1, 0.3, 0.5, 2e-4, 7.0)
    silent.log("saved checkpoint x")
    assert silent.bar is None and capsys.readouterr().out == ""


def test_summary_lines_say_what_ran_and_where_things_are():
    summary = {
        "stage": "finetune", "step": 6, "steps_run": 6, "total_steps": 30, "seconds": 75.0, "clips_per_s": 3.2,
        "last_loss": 0.9, "best_loss": 0.8, "best_step": 5, "run_dir": "runs/ft", "checkpoint": "runs/ft/checkpoint",
        "eval": {"clips": 4, "rows": 4, "top1": 0.75}, "predictions": "runs/ft/predictions.jsonl",
    }  # fmt: skip
    lines = summary_lines(summary)
    assert lines[0] == "done: 6 steps (6/30 of the schedule) in 0:01:15, 3.2 clips/s"
    assert lines[1] == "loss: last 0.9000, best 0.8000 (step 5)"
    assert lines[2] == "held-out (4 clips): top1 0.7500"
    assert "runs/ft/checkpoint" in lines[3] and "predictions.jsonl" in lines[3]


def test_a_run_talks_saves_and_sums_up(shards, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", "--data", shards["unlabelled"], "--out", str(run), *TINY_MODEL, *SMALL]
    # 15 warmup steps in a 3-step run: the peak lr is never reached
    assert main([*args, "--max-steps", "3", "--set", "optim.warmup_steps=15", "--set", "run.save_every=2"]) == 0
    out = capsys.readouterr().out
    assert "warning: the warmup takes 15 steps but this run stops at step 3" in out
    assert f"saved checkpoint {run}/checkpoints/step-00000002.pt (step 2)" in out
    assert f"saved checkpoint {run}/checkpoints/step-00000003.pt (step 3)" in out
    assert "[avf-train pretrain] step 1/" in out and "[avf-train pretrain] done: 3 steps" in out
    assert out.rstrip().splitlines()[-1].startswith(f"[avf-train pretrain] run folder {run}")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 3 and summary["steps_run"] == 3 and summary["checkpoint"].endswith("step-00000003.pt")
    assert summary["best_loss"] <= summary["last_loss"]
