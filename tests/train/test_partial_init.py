"""``--init`` with encoder blocks the model lacks is an error naming them, unless
``--allow-partial-init`` (``finetune.allow_partial_init``); the log counts backbone, decoder and
head tensors apart (issue #21 §2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from run_args import ONE_CPU, TINY_MODEL

from avf_train.cli import main
from avf_train.config import from_dict
from avf_train.errors import StageError
from avf_train.modeling import build_model, init_from

BLOCKS = "the checkpoint has video and audio encoder blocks 2-3 that the model (depth 2) lacks"


@pytest.fixture(scope="module")
def deep_init(tmp_path_factory) -> Path:
    """A depth-4 tiny pre-training checkpoint as avf-train writes it (stage and model recorded)."""
    from avf_models import create_model

    torch.manual_seed(0)
    model = create_model("avfmae_pp_tiny", depth=4, depth_audio=4)
    path = tmp_path_factory.mktemp("init") / "deep.pt"
    torch.save({"model": model.state_dict(), "stage": "pretrain", "model_name": "avfmae_pp_tiny"}, path)
    return path


def _cfg(init: Path, **finetune: object):
    return from_dict(
        {"model": {"name": "avfmae_pp_tiny"}, "finetune": {"init": str(init), "num_classes": 3, **finetune}},
        stage="finetune",
    )


def test_init_from_names_the_blocks_and_the_flag(deep_init: Path) -> None:
    cfg = _cfg(deep_init)
    assert cfg.finetune.allow_partial_init is False
    with pytest.raises(StageError) as err:
        init_from(build_model(cfg), cfg, print)
    msg = str(err.value)
    assert msg.startswith(f"cannot load {deep_init} into avfmae_pp_tiny: {BLOCKS}")
    assert "168 pre-trained backbone tensors would be dropped" in msg
    assert "--allow-partial-init" in msg and "--set finetune.allow_partial_init=true" in msg


def test_init_from_opt_in_logs_each_kind(deep_init: Path) -> None:
    cfg = _cfg(deep_init, allow_partial_init=True)
    lines: list[str] = []
    init_from(build_model(cfg), cfg, lines.append)
    assert lines[-1] == (
        f"init from {deep_init} (pretrain): loaded 392 backbone tensors; partial: {BLOCKS}; "
        "dropped 168 checkpoint backbone tensors; skipped 130 decoder tensors (pre-training only), head new"
    )


def test_cli_refuses_a_deeper_init_in_one_line(deep_init: Path, shards, tmp_path: Path, capsys) -> None:
    argv = ["finetune", "--data", shards["labelled"], "--init", str(deep_init), "--num-classes", "3"]
    argv += [*TINY_MODEL, *ONE_CPU, "--batch-size", "2", "--max-steps", "1", "--out"]
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "refused")]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("avf-train: error: cannot load") and BLOCKS in lines[0], lines
    assert "--allow-partial-init" in lines[0]


def test_cli_allow_partial_init_trains_and_logs_the_counts(deep_init: Path, shards, tmp_path: Path, capsys) -> None:
    argv = ["finetune", "--data", shards["labelled"], "--init", str(deep_init), "--num-classes", "3"]
    argv += [*TINY_MODEL, *ONE_CPU, "--batch-size", "2", "--max-steps", "1", "--allow-partial-init"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    assert f"{BLOCKS}; dropped 168 checkpoint backbone tensors" in out.out + out.err
