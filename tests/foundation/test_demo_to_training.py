"""The packages chain: `avf-data build` demo shards feed `avf-train pretrain`, and the loss falls."""

import json

import pytest

from avf_data.build import build
from avf_data.demo import make_demo_inputs
from avf_train.cli import main as avf_train


@pytest.mark.slow
def test_tiny_model_pretrains_on_curated_demo_shards(tmp_path):
    demo = make_demo_inputs(tmp_path / "inputs")
    stats = build([str(demo["single_face"]), str(demo["long_silence"])], tmp_path / "corpus", workers=2, progress=False)
    assert stats["clips"] == 3  # one from single_face, two around the long silence
    run = tmp_path / "run"
    assert (
        avf_train(
            [
                "pretrain",
                "--model",
                "tiny",
                "--data",
                str(tmp_path / "corpus" / "shards" / "*.tar"),
                "--out",
                str(run),
                "--batch-size",
                "2",
                "--num-workers",
                "0",
                "--precision",
                "fp32",
                "--max-steps",
                "8",
                "--lr",
                "1e-3",
                "--set",
                "optim.warmup_steps=1",
                "--set",
                "run.log_every=1",
                "--set",
                "run.tensorboard=false",
            ]
        )
        == 0
    )
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
