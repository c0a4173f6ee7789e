"""Checkpoint conversion: official key/shape lists -> our models, strictly, plus pretrain -> finetune."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from avfm_helpers import OFFICIAL, fake_official_state_dict, official_keys

from avf_models import cli, create_model, load_pretrained_into_finetune
from avf_models.convert import (
    CheckpointMismatchError,
    check_state_dict,
    convert_checkpoint,
    convert_official_state_dict,
    load_checkpoint,
    ours_to_official_key,
)


def _save_official(sd: dict, path: Path, **args: object) -> Path:
    container = {
        "model": sd,
        "optimizer": {"state": {}},
        "epoch": 7,
        "scaler": {"scale": 65536.0},
        "args": argparse.Namespace(model="pretrain_hicmae_dim512_patch16_160_a256", lr=1.5e-4, **args),
    }
    torch.save(container, path)
    return path


@pytest.mark.parametrize("stem", ["avfmaepp_B_pretrain", "avfmaepp_B_finetune_nc11"])
def test_convert_round_trip_base(stem: str, tmp_path: Path) -> None:
    sd = fake_official_state_dict(stem)
    src = _save_official(sd, tmp_path / "official.pth", return_intermediate_features=[3, 6, 9])
    cfg = convert_checkpoint(src, tmp_path / "ours.pth")
    assert cfg.embed_dim == 512 and cfg.depth == 10 and cfg.skip_layers == (3, 6, 9)
    out = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert out["stage"] == ("pretrain" if "pretrain" in stem else "finetune")
    ours = out["model"]
    assert len(ours) == len(sd)
    # every official key maps to exactly one of ours carrying the same tensor
    back = {ours_to_official_key(k): k for k in ours}
    assert len(back) == len(ours)
    for k, v in sd.items():
        assert torch.equal(ours[back[k]], v), k
    # every model key is filled (checked on a meta-device model)
    with torch.device("meta"):
        model = create_model("avfmae_pp_base", out["stage"], num_classes=11)
    check_state_dict(model, ours)
    assert {ours_to_official_key(k) for k in ours} == set(sd)


@pytest.mark.parametrize(("stem", "name", "stage"), OFFICIAL)
def test_every_official_key_list_converts(stem: str, name: str, stage: str) -> None:
    shapes = dict(official_keys(stem))
    ours = convert_official_state_dict({k: torch.empty(0) for k in shapes})
    with torch.device("meta"):
        model = create_model(name, stage, num_classes=11)
    own = model.state_dict()
    assert set(ours) == set(own)
    assert all(tuple(own[k].shape) == shapes[ours_to_official_key(k) if name != "hicmae_base" else k] for k in ours)


def test_convert_is_strict_and_lists_keys(tmp_path: Path) -> None:
    sd = fake_official_state_dict("avfmaepp_B_finetune_nc11")
    del sd["encoder_fusion.blocks.0.norm3.weight"]  # the line the released code lost
    sd["encoder.extra_tensor"] = torch.zeros(3)
    src = _save_official(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        convert_checkpoint(src, tmp_path / "out.pth")
    msg = str(err.value)
    assert "encoder_fusion.blocks.0.norm3.weight" in msg and "encoder.extra_tensor" in msg
    assert "missing" in msg and "unexpected" in msg
    assert not (tmp_path / "out.pth").exists()


def test_loading_is_weights_only(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": {"x": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pth")


def test_prefixed_keys_are_stripped() -> None:
    sd = {
        "module._orig_mod.encoder.norm.weight": torch.ones(2),
        "module.encoder_fusion.Iterative_Refinement_Module.layer_norm.bias": torch.ones(2),
        "encoder_fusion.cross_norm_3.weight": torch.ones(2),
        "encoder_fusion.blocks.0.cross_attn.q_bias": torch.ones(2),
    }
    assert sorted(convert_official_state_dict(sd)) == sorted(
        [
            "encoder.norm.weight",
            "encoder_fusion.er.layer_norm.bias",
            "encoder_fusion.hafe.cross_norm_3.weight",
            "encoder_fusion.blocks.0.cross_attn.q_bias",
        ]
    )


def test_pretrain_to_finetune_base_keys() -> None:
    """All B fine-tuning backbone keys come from the B pre-training key list; 176 keys are ignored."""
    sd = {k: torch.empty(s) if s else torch.tensor(0) for k, s in official_keys("avfmaepp_B_pretrain")}
    with torch.device("meta"):
        model = create_model("avfmae_pp_base", "finetune", num_classes=11)
    report = load_pretrained_into_finetune(model, sd)
    assert sorted(report.missing) == [
        "fc_norm.bias",
        "fc_norm.weight",
        "head.bias",
        "head.weight",
        "layer_weights_audio",
        "layer_weights_video",
    ]
    assert len(report.ignored) == 176
    assert all(k.startswith(("decoder", "encoder_to_decoder", "mask_token")) for k in report.ignored)


def test_pretrain_to_finetune_copies_values_tiny() -> None:
    torch.manual_seed(0)
    pre = create_model("avfmae_pp_tiny")
    official = {ours_to_official_key(k): v for k, v in pre.state_dict().items()}
    ft = create_model("avfmae_pp_tiny", "finetune", num_classes=3)
    report = load_pretrained_into_finetune(ft, {"model": official})
    own = ft.state_dict()
    assert report.loaded and all(torch.equal(own[k], pre.state_dict()[k]) for k in report.loaded)
    assert "encoder_fusion.er.post_extract_proj.weight" in report.loaded
    # video-only model takes only the video encoder
    ftv = create_model("avfmae_pp_tiny", "finetune", num_classes=3, modality="video")
    rep = load_pretrained_into_finetune(ftv, official)
    assert all(k.startswith("encoder.") for k in rep.loaded) and rep.loaded


def test_pretrain_to_finetune_rejects_incomplete() -> None:
    pre = create_model("avfmae_pp_tiny")
    sd = pre.state_dict()
    del sd["encoder.norm.weight"]
    ft = create_model("avfmae_pp_tiny", "finetune")
    with pytest.raises(CheckpointMismatchError, match="encoder.norm.weight"):
        load_pretrained_into_finetune(ft, sd)


def test_cli_info_and_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "avfmae_pp_base"]) == 0
    out = capsys.readouterr().out
    assert "187,942,660" in out and "169,122,851" in out
    sd = fake_official_state_dict("avfmaepp_B_finetune_nc11")
    src = _save_official(sd, tmp_path / "ft.pth")
    assert cli.main(["convert", "--checkpoint", str(src), "--out", str(tmp_path / "converted")]) == 0
    converted = torch.load(tmp_path / "converted" / "checkpoint.pt", weights_only=True)
    assert converted["model_name"] == "avfmae_pp_base" and converted["stage"] == "finetune"
    # the old positional form still writes the file it names
    assert cli.main(["convert", str(src), str(tmp_path / "ours.pth")]) == 0
    assert (tmp_path / "ours.pth").is_file()
    del sd["head.bias"]
    bad = _save_official(sd, tmp_path / "bad.pth")
    capsys.readouterr()
    assert cli.main(["convert", "--checkpoint", str(bad), "--out", str(tmp_path / "x")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "head.bias" in lines[0] and "1 missing key(s)" in lines[0]


def _exit_code(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse refusing the command line
        return int(exc.code)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["info", "unknown_model"], "unknown model 'unknown_model'"),
        (["convert", "--checkpoint", "missing.pth", "--out", "out"], "checkpoint missing.pth does not exist"),
        (["convert", "missing.pth", "ours.pth"], "checkpoint missing.pth does not exist"),
        (["convert", "--checkpoint", "x.pth"], "--out"),
        (["info", "avfmae_pp_base", "--num-classes", "seven"], "invalid int value: 'seven'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv: list[str], words: str, tmp_path: Path, capsys, monkeypatch) -> None:
    """The CLI contract of every avf command: unknown input -> one line `avf-models: error: ...`, status 2."""
    monkeypatch.chdir(tmp_path)
    assert _exit_code(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avf-models: error: ") and words in lines[0], lines
    assert not captured.out and not (tmp_path / "out").exists()


def test_convert_refuses_a_file_that_is_not_a_checkpoint(tmp_path: Path, capsys) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert cli.main(["convert", "--checkpoint", str(text), "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "not a torch checkpoint" in lines[0]


def test_load_model_from_converted_and_official(tmp_path: Path) -> None:
    from avf_models import load_model

    torch.manual_seed(0)
    pre = create_model("avfmae_pp_tiny")
    official = {ours_to_official_key(k): v for k, v in pre.state_dict().items()}
    src = _save_official(official, tmp_path / "tiny_official.pth", return_intermediate_features=[0, 1])
    # official file, same stage
    m = load_model(src)
    assert m.config.embed_dim == 64 and m.config.skip_layers == (0, 1)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), pre.state_dict().values(), strict=False))
    # converted file, into a fine-tuning model with a new head
    convert_checkpoint(src, tmp_path / "ours.pth")
    ft = load_model(tmp_path / "ours.pth", stage="finetune", num_classes=5)
    assert ft.head.out_features == 5
    assert torch.equal(ft.encoder.norm.weight, pre.encoder.norm.weight)


def test_hicmae_finetune_checkpoints_are_refused_clearly() -> None:
    from avf_models.convert import infer_config

    sd = {k: torch.empty(s) for k, s in official_keys("hicmae_B_finetune_nc11")}
    with pytest.raises(CheckpointMismatchError, match="HiCMAE fine-tuning"):
        infer_config(sd)
