"""``avf-models convert`` on inputs that need help or must be refused: a bare state dict of
non-default depth with its skip layers given (issue #21 §2), a plain pickle and a wrong-shaped
tensor (issue #22 items 7-8)."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from avfm_helpers import fake_official_state_dict

from avf_models import cli, create_model
from avf_models.convert import CheckpointMismatchError, convert_checkpoint, ours_to_official_key

SKIPS = (1, 3)  # a depth-4 tiny model: neither its depth nor its skips are the tiny defaults


@pytest.fixture(scope="module")
def deep_official() -> dict[str, torch.Tensor]:
    """A bare official-named pre-training state dict of a depth-4 tiny model."""
    torch.manual_seed(0)
    model = create_model("avfmae_pp_tiny", depth=4, depth_audio=4, skip_layers=SKIPS)
    return {ours_to_official_key(k): v for k, v in model.state_dict().items()}


def _one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avf-models: error: "), lines
    return lines[0]


def test_supplied_skip_layers_equal_the_checkpoints_own_args(deep_official, tmp_path: Path) -> None:
    bare, with_args = tmp_path / "bare.pth", tmp_path / "args.pth"
    torch.save(deep_official, bare)
    torch.save(
        {"model": deep_official, "args": argparse.Namespace(return_intermediate_features=list(SKIPS))}, with_args
    )
    with pytest.raises(CheckpointMismatchError, match="cannot infer skip_layers.*--set model.skip_layers"):
        convert_checkpoint(bare, tmp_path / "refused.pt")
    cfg = convert_checkpoint(bare, tmp_path / "a.pt", {"skip_layers": SKIPS})
    assert cfg == convert_checkpoint(with_args, tmp_path / "b.pt")
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab")
    assert a.keys() == b.keys()  # only "source" (the file name) differs in value
    assert a["config"] == b["config"] and a["model_name"] == b["model_name"] and a["stage"] == b["stage"] == "pretrain"
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert tuple(a["config"]["skip_layers"]) == SKIPS and a["config"]["depth"] == 4


def test_cli_set_gives_skip_layers_and_refuses_contradictions(deep_official, tmp_path: Path, capsys) -> None:
    src = tmp_path / "bare.pth"
    torch.save(deep_official, src)
    out = ["convert", "--checkpoint", str(src), "--out", str(tmp_path / "o")]
    assert cli.main([*out, "--set", "model.skip_layers=1,3"]) == 0
    assert "depth 4, skips [1, 3]" in capsys.readouterr().out
    for setting, words in [
        ("model.depth=3", "depth=3 contradicts the checkpoint, whose tensors give 4"),
        ("model.skip_layers=[1]", "skip_layers=[1] means 2 decoder blocks; the checkpoint has 3"),
        ("model.skip_layers=1,7", "skip_layers=[1, 7]: each must be an encoder layer 0-3"),
        ("model.skip_layer=1,3", "did you mean model.skip_layers?"),
        ("model.skip_layers=one", "--set model.skip_layers=one: expected tuple"),
        ("model.encoder_type=cnn", "expected one of lgi, vit"),
    ]:
        line = _one_error_line(capsys, [*out, "--set", "model.skip_layers=1,3", "--set", setting])
        assert words in line, (setting, line)
    # a value contradicting the checkpoint's own args
    torch.save({"model": deep_official, "args": argparse.Namespace(return_intermediate_features=[0, 3])}, src)
    line = _one_error_line(capsys, [*out, "--set", "model.skip_layers=1,3"])
    assert "contradicts the checkpoint's args.return_intermediate_features [0, 3]" in line


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_plain_pickle_is_one_line_without_warnings(tmp_path: Path, protocol: int) -> None:
    """Run as a user would: torch's protocol warning used to add two lines before the error."""
    src = tmp_path / "weights.pkl"
    src.write_bytes(pickle.dumps({"model": {"encoder.norm.weight": [1.0, 2.0]}}, protocol=protocol))
    run = subprocess.run(
        [sys.executable, "-m", "avf_models.cli", "convert", "--checkpoint", str(src), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and not run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avf-models: error: "), run.stderr
    assert "not a torch checkpoint (a plain pickle" in lines[0]
    assert not (tmp_path / "o").exists()


def test_a_state_dict_with_a_non_tensor_is_one_line(tmp_path: Path, capsys) -> None:
    src = tmp_path / "odd.pth"
    torch.save({"model": {"encoder.patch_embed.proj.weight": 3}}, src)
    line = _one_error_line(capsys, ["convert", "--checkpoint", str(src), "--out", str(tmp_path / "o")])
    assert "'encoder.patch_embed.proj.weight' is a int" in line


def test_a_wrong_shaped_tensor_is_refused(tmp_path: Path, capsys) -> None:
    """One tensor of another shape (same name, same everything else) must not convert."""
    sd = fake_official_state_dict("avfmaepp_B_finetune_nc11")
    key = "encoder.blocks.3.mlp.fc1.weight"
    good = tuple(sd[key].shape)
    sd[key] = torch.zeros(good[0], good[1] - 1)
    src = tmp_path / "bad_shape.pth"
    torch.save({"model": sd, "args": argparse.Namespace(return_intermediate_features=[3, 6, 9])}, src)
    with pytest.raises(CheckpointMismatchError) as err:
        convert_checkpoint(src, tmp_path / "out.pt")
    assert f"1 shape mismatch key(s): {key}: checkpoint {(good[0], good[1] - 1)} vs model {good}" in str(err.value)
    assert not (tmp_path / "out.pt").exists()
    line = _one_error_line(capsys, ["convert", "--checkpoint", str(src), "--out", str(tmp_path / "o")])
    assert key in line and not (tmp_path / "o" / "checkpoint.pt").exists()
