"""User errors end in one ``avf-train: error:`` line and exit status 2, found before any loader
worker starts; and loader workers do not outlive a trainer killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_args import ONE_CPU, TINY_MODEL

from avf_train.cli import main

FAST = [*TINY_MODEL, *ONE_CPU, "--max-steps", "1"]


def _refused(capsys, args: list[str]) -> str:
    capsys.readouterr()
    started = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - started < 20  # found before training, not at the first step
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("avf-train: error: "), lines
    return lines[0]


def _refused_run(capsys, command: str, data: str, out: Path, *extra: str) -> str:
    """``_refused`` for a tiny training run: ``command --data DATA --out OUT`` + FAST + ``extra``."""
    return _refused(capsys, [command, "--data", data, "--out", str(out), *FAST, *extra])


def _exit_code(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # argparse refusing the command line
        return int(exc.code)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["pretrain", "--data", "missing/*.tar", "--out", "run"], "missing/*.tar"),
        (["pretrain", "--data", "missing/*.tar", "--out", "run", "--set", "nope.x=1"], "unknown config key 'nope'"),
        (["pretrain", "--out", "run", "--config", "nope"], "neither a file nor a shipped config"),
        (["finetune", "--out", "run", "--config", "pretrain_base"], "is for stage 'pretrain', not 'finetune'"),
        (["postpretrain", "--out", "run", "--task", "dea"], "invalid choice: 'dea'"),
        (["finetune", "--init", "missing.pt", "--data", "missing/*.tar", "--out", "run"], "missing"),
        (
            ["predict", "--checkpoint", "missing.pt", "--data", "x/*.tar", "--out", "p"],
            "checkpoint missing.pt does not exist",
        ),
        (
            ["predict", "--checkpoint", "missing.pt", "--data", "x/*.tar", "--out", "p", "--set", "run.seed=1"],
            "predict takes --set data.FIELD=VALUE only",
        ),
        (["predict", "--data", "x/*.tar", "--out", "p"], "--checkpoint is required"),
        (["pretrain", "--batch-size", "many"], "invalid int value: 'many'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, words, tmp_path, monkeypatch, capsys):
    """The CLI contract of every avf command: unknown input -> one line `avf-train: error: ...`, status 2."""
    monkeypatch.chdir(tmp_path)
    assert _exit_code(args) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("avf-train: error: ") and words in lines[0], lines
    assert not (tmp_path / "run").exists() and not (tmp_path / "p").exists()


def test_too_few_clips_for_the_batch_is_found_before_the_workers_start(shards, tmp_path, capsys):
    # 8 clips in 2 shards of 4; 2 workers read one shard each: 4 clips per stream per pass
    line = _refused_run(
        capsys, "pretrain", shards["unlabelled"], tmp_path / "a", "--batch-size", "8", "--num-workers", "2"
    )
    assert "8 clips in 2 shard(s)" in line and "1 rank(s) x 2 loader worker(s)" in line
    assert "smallest stream gets 4 clips" in line and "--batch-size 4 or less" in line
    assert "--num-workers 1" in line  # one worker would read both shards: 8 clips


def test_batch_fit_rule_is_the_loaders_worst_pass():
    from avf_train.preflight import stream_clips

    assert stream_clips([4, 4], 2) == 4 and stream_clips([4, 4], 1) == 8
    # 9 shards on 8 streams: some stream reads a single shard, in the worst pass the 3-clip one
    assert stream_clips([1000] * 8 + [3], 8) == 3
    assert stream_clips([10, 3], 4) == 3  # fewer shards than streams: clips dealt round-robin


def test_unlabelled_shards_for_a_labelled_stage(shards, tmp_path, capsys):
    line = _refused_run(
        capsys, "finetune", shards["unlabelled"], tmp_path / "a", "--num-classes", "3", "--batch-size", "2"
    )
    assert "8 of 8 clips have no label" in line and "avf-data import" in line


def test_labels_outside_the_label_map(shards, tmp_path, capsys):
    # the labelled fixture holds labels 0, 1 and 2
    line = _refused_run(
        capsys, "finetune", shards["labelled"], tmp_path / "a", "--num-classes", "2", "--batch-size", "2"
    )
    assert "outside the label map of 2 classes" in line and "label 2 in" in line
    # a named label map that lacks some of the clips' names
    two = tmp_path / "two.yaml"
    two.write_text("classes: [Happy, Sadness]\naliases: {happiness: Happy}\n")
    line = _refused_run(
        capsys, "finetune", shards["labelled"], tmp_path / "b", "--set", f"data.label_map={two}", "--batch-size", "2"
    )
    assert "outside the label map 'two'" in line and "'Angry'" in line


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_init_and_ckpt(shards, tmp_path, capsys, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    line = _refused_run(
        capsys,
        "finetune",
        shards["labelled"],
        tmp_path / "a",
        "--init",
        str(bad),
        "--num-classes",
        "3",
        "--batch-size",
        "2",
    )
    assert f"cannot read checkpoint {bad}" in line
    line = _refused(
        capsys, ["predict", "--checkpoint", str(bad), "--data", shards["labelled"], "--out", str(tmp_path / "p")]
    )
    assert f"cannot read checkpoint {bad}" in line


def test_device_cuda_without_cuda_is_one_line(shards, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = _refused_run(
        capsys, "pretrain", shards["unlabelled"], tmp_path / "a", "--batch-size", "2", "--device", "cuda"
    )
    assert "no CUDA device" in line


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loader_workers_exit_when_the_trainer_is_killed(shards, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "avf_train.cli",
        "pretrain",
        "--data",
        shards["unlabelled"],
        "--out",
        str(run),
        "--model",
        "tiny",
        "--batch-size",
        "2",
        "--num-workers",
        "2",
        "--precision",
        "fp32",
        "--epochs",
        "1000",
        "--set",
        "run.tensorboard=false",
        "--set",
        "run.log_every=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        workers: set[int] = set()
        for line in proc.stdout:  # wait for a logged step: the workers are up and serving batches
            if " step 1/" in line:
                workers = _descendants(proc.pid)
                break
        assert len(workers) >= 2, "no loader workers found"  # forkserver + 2 workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], "loader processes outlived the trainer"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _descendants(proc.pid):  # clean up only what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
