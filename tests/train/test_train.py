"""End-to-end on CPU with avfmae_pp_tiny: pre-train (loss falls), exact resume, the
post-pre-train -> fine-tune -> predict chain, and the clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_args import SMALL, TINY_MODEL

from avf_train.cli import main

FAST = [*TINY_MODEL, *SMALL]
PRETRAIN = FAST + ["--epochs", "3", "--lr", "1e-3", "--set", "optim.warmup_steps=1"]
CEA3_ONE_STEP = ["--task", "cea", "--num-classes", "3", "--max-steps", "1"]  # the labelled fixture's 3 classes


def _train(command: str, data: str, out: Path, *extra: str, flags: list[str] = FAST) -> int:
    """``avf-train COMMAND --data DATA --out OUT EXTRA FLAGS`` in this process; its exit code."""
    return main([command, "--data", data, "--out", str(out), *extra, *flags])


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pretrained(shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrain") / "run"
    steps = ["--max-steps", "6", "--set", "run.save_every=2", "--set", "run.keep_last=2"]
    assert _train("pretrain", shards["unlabelled"], run, *steps, flags=PRETRAIN) == 0
    return run


def test_pretrain_loss_falls_and_run_layout(pretrained):
    losses = _losses(pretrained)
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    assert (pretrained / "config.yaml").exists()
    assert sorted(p.name for p in (pretrained / "checkpoints").iterdir()) == ["step-00000004.pt", "step-00000006.pt"]
    assert os.path.realpath(pretrained / "checkpoint").endswith("step-00000006.pt")
    ckpt = torch.load(pretrained / "checkpoint", weights_only=True)
    assert ckpt["stage"] == "pretrain" and ckpt["step"] == 6 and ckpt["model_name"] == "avfmae_pp_tiny"
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "data", "config"} <= set(ckpt)
    record = json.loads((pretrained / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"lr", "loss_video", "loss_audio", "loss_contrastive", "clips_per_s", "eta_s", "grad_norm"} <= set(record)


def test_resume_reproduces_the_uninterrupted_losses(pretrained, shards, tmp_path):
    run = tmp_path / "halves"
    args = ["pretrain", "--data", shards["unlabelled"], "--out", str(run), *PRETRAIN]
    assert main([*args, "--max-steps", "4", "--set", "run.save_every=3"]) == 0
    # simulate a kill after step 4 was logged but before it was saved: back to the step-3 checkpoint
    (run / "checkpoints" / "step-00000004.pt").unlink()
    (run / "checkpoint").unlink()
    (run / "checkpoint").symlink_to("checkpoints/step-00000003.pt")
    assert main([*args, "--max-steps", "6", "--resume"]) == 0
    assert _losses(run) == pytest.approx(_losses(pretrained), abs=1e-6)
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    # a second start without --resume must not clobber the run
    assert main([*args, "--max-steps", "6"]) == 2


def test_postpretrain_finetune_predict_chain(pretrained, shards, tmp_path):
    post = tmp_path / "post"
    # no --model: the architecture comes from the --init checkpoint
    assert (
        _train(
            "postpretrain",
            shards["labelled"],
            post,
            "--init",
            str(pretrained / "checkpoint"),
            "--max-steps",
            "2",
            flags=SMALL,
        )
        == 0
    )
    ck = torch.load(post / "checkpoint", weights_only=True)
    assert ck["stage"] == "postpretrain" and ck["model"]["head.weight"].shape[0] == 13  # CEA-13 hybrid

    fine = tmp_path / "fine"
    val = str(Path(shards["labelled"]).parent / "labelled-000000.tar")
    assert (
        _train(
            "finetune",
            shards["labelled"],
            fine,
            "--init",
            str(post),
            "--val-data",
            val,
            *CEA3_ONE_STEP,
            flags=SMALL,
        )
        == 0
    )
    assert "avfmae_pp_tiny" in (fine / "config.yaml").read_text()
    rows = [json.loads(line) for line in (fine / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 4  # 4 clips x (2 segments x 2 crops)
    assert {r["view"] for r in rows} == {0, 1, 2, 3}
    row = rows[0]
    assert set(row) >= {"key", "label", "view", "segment", "crop", "logits", "probs"}
    assert len(row["probs"]) == 3 and abs(sum(row["probs"]) - 1) < 1e-5

    # predict as its own command, into a folder: the same views give the same logits as the run's own
    out = tmp_path / "p"
    assert main(["predict", "--checkpoint", str(fine), "--data", val, "--out", str(out), "--fold", "3"]) == 0
    again = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    logits = {(r["key"], r["view"]): r["logits"] for r in rows}
    assert len(again) == len(rows) and again[0]["fold"] == "3" and again[0]["epoch"] == 1
    assert all(r["logits"] == pytest.approx(logits[r["key"], r["view"]], abs=1e-5) for r in again)
    # one view per clip, with the flag and with --set
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(fine),
                "--data",
                val,
                "--out",
                str(out),
                "--segments",
                "1",
                "--set",
                "data.clip.test_crops=1",
            ]
        )
        == 0
    )
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    # old spellings are gone before the first release: one line, exit 2
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--ckpt", str(fine), "--data", val, "--out", str(tmp_path / "old")])
    assert exc.value.code == 2


def test_dea_regression_finetune(pretrained, shards, tmp_path):
    run = tmp_path / "dea"
    val = str(Path(shards["labelled"]).parent / "labelled-000000.tar")
    assert (
        _train(
            "finetune",
            shards["labelled"],
            run,
            "--init",
            str(pretrained),
            "--task",
            "dea",
            "--num-classes",
            "2",
            "--max-steps",
            "1",
            "--grad-accum",
            "2",
            "--val-data",
            val,
        )
        == 0
    )
    ckpt = torch.load(run / "checkpoint", weights_only=True)
    assert ckpt["model"]["head.weight"].shape[0] == 2
    assert ckpt["data"][0]["consumed"] == 2  # two micro-batches for the one optimizer step
    # regression rows in avf-eval's field names: the targets are the label, the outputs the prediction
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(len(r["label"]) == 2 and len(r["prediction"]) == 2 and "logits" not in r for r in rows)
    from avf_eval.prediction_reader import load_predictions

    table = load_predictions([run / "predictions.jsonl"])
    assert table.labels.shape == (len(rows), 2) and not table.is_logits.any()


def test_a_converted_official_checkpoint_starts_a_finetune(shards, tmp_path):
    """`avf-models convert --out DIR` writes what `avf-train --init DIR` reads, model name included."""
    import argparse

    from avf_models import create_model
    from avf_models.cli import main as avf_models
    from avf_models.convert import ours_to_official_key

    torch.manual_seed(0)
    official = {ours_to_official_key(k): v for k, v in create_model("avfmae_pp_tiny").state_dict().items()}
    torch.save(
        {"model": official, "args": argparse.Namespace(return_intermediate_features=[0, 1])}, tmp_path / "official.pth"
    )
    converted = tmp_path / "converted"
    assert avf_models(["convert", "--checkpoint", str(tmp_path / "official.pth"), "--out", str(converted)]) == 0
    run = tmp_path / "ft"
    assert (
        _train(
            "finetune",
            shards["labelled"],
            run,
            "--init",
            str(converted),
            "--num-classes",
            "3",
            "--max-steps",
            "1",
            flags=SMALL,
        )
        == 0
    )  # no --model: the file names it
    assert torch.load(run / "checkpoint", weights_only=True)["model_name"] == "avfmae_pp_tiny"


def test_finetune_checkpoint_names_its_classes(pretrained, shards, tmp_path):
    """`avf-data import` leaves classes.json above its shards/; the checkpoint keeps the names."""
    imported = tmp_path / "imported"
    (imported / "shards").mkdir(parents=True)
    for shard in Path(shards["labelled"]).parent.glob("*.tar"):
        shutil.copy(shard, imported / "shards" / shard.name)
    (imported / "classes.json").write_text(json.dumps({"classes": ["happy", "neutral", "sad"], "num_classes": 3}))
    run = tmp_path / "named"
    assert (
        _train(
            "finetune",
            str(imported / "shards" / "*.tar"),
            run,
            "--init",
            str(pretrained),
            *CEA3_ONE_STEP,
        )
        == 0
    )
    assert torch.load(run / "checkpoint", weights_only=True)["class_names"] == ["happy", "neutral", "sad"]
    # post-pre-training on the CEA hybrid names the 13 aligned classes
    post = tmp_path / "post13"
    assert _train("postpretrain", shards["labelled"], post, "--init", str(pretrained), "--max-steps", "1") == 0
    assert len(torch.load(post / "checkpoint", weights_only=True)["class_names"]) == 13


def test_clear_errors(pretrained, shards, tmp_path, capsys):
    # missing shards
    assert main(["pretrain", "--data", str(tmp_path / "none/*.tar"), "--out", str(tmp_path / "a"), *FAST]) == 2
    assert "none/*.tar" in capsys.readouterr().err
    # shape mismatch between the data config and the model
    assert _train("pretrain", shards["unlabelled"], tmp_path / "b", "--set", "data.clip.num_frames=8") == 2
    assert "shape mismatch" in capsys.readouterr().err
    # resuming a pre-training run as fine-tuning
    copy = tmp_path / "copy"
    shutil.copytree(pretrained, copy, symlinks=True)
    assert (
        main(["finetune", "--resume", "--out", str(copy), "--data", shards["labelled"], "--num-classes", "3", *FAST])
        == 2
    )
    assert "'pretrain' checkpoint" in capsys.readouterr().err
    # predict needs a supervised checkpoint
    assert (
        main(["predict", "--checkpoint", str(pretrained), "--data", shards["labelled"], "--out", str(tmp_path / "p")])
        == 2
    )
    assert "predict needs" in capsys.readouterr().err
    # --out is a folder now: a file name is refused rather than turned into a folder
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(pretrained),
                "--data",
                shards["labelled"],
                "--out",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 2
    )
    assert "--out is the folder" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(shards, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "ddp"
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "avf_train.cli",
        "pretrain",
        "--data",
        shards["unlabelled"],
        "--out",
        str(run),
        "--max-steps",
        "2",
        "--device",
        "cpu",
        *PRETRAIN,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "checkpoint", weights_only=True)
    # two steps: DDP would fail at the second one if a parameter were left out of the graph (the
    # last LGI block's stage IV gets zero gradients, so no find_unused_parameters is needed)
    assert len(ckpt["rng"]) == 2 and len(ckpt["data"]) == 2 and ckpt["step"] == 2
