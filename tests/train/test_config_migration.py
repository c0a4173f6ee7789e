"""Configs written before the per-clip settings moved into ``data.clip`` still load, unchanged.

Run folders (``RUN/config.yaml``), checkpoints (their ``config`` dict), user YAMLs and ``--set``
assignments of that time name ``data.num_frames``, ``data.test_crops`` and so on; each must give
the same run as the nested ``data.clip.*`` spelling.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from avf_data.settings import ConfigError
from avf_train.config import (
    from_dict,
    load_yaml,
    migrate,
    resolve,
    to_dict,
    transform_config,
)
from avf_train.modeling import load_predictor

# a fine-tuning config's data section as 0.1.0 wrote it, before data.clip existed
OLD_DATA = {
    "shards": "/data/train-*.tar",
    "num_frames": 4,
    "sampling_rate": 2,
    "image_size": 32,
    "audio_frames": 64,
    "mel_bins": 128,
    "crop_scales": [1.0, 0.5],
    "audio_gain_aug": False,
    "rand_augment": "",
    "random_resized_crop_scale": [0.5, 1.0],
    "flip": False,
    "random_erase": 0.0,
    "repeated_aug": 1,
    "test_segments": 1,
    "test_crops": 3,
}


def test_an_old_flat_config_loads_into_data_clip() -> None:
    cfg = from_dict({"stage": "finetune", "data": OLD_DATA})
    clip = cfg.data.clip
    assert (clip.num_frames, clip.sampling_rate, clip.image_size, clip.audio_frames) == (4, 2, 32, 64)
    assert clip.crop_scales == (1.0, 0.5) and clip.random_resized_crop_scale == (0.5, 1.0)
    assert (clip.audio_gain_aug, clip.flip, clip.rand_augment, clip.random_erase) == (False, False, "", 0.0)
    assert (clip.test_segments, clip.test_crops) == (1, 3)
    assert cfg.data.shards == "/data/train-*.tar" and cfg.data.repeated_aug == 1
    views = transform_config(cfg, "test")
    assert views.num_views == 3 and views.mode == "test" and views.random_resized_crop_scale == (0.5, 1.0)


def test_old_and_new_spellings_give_the_same_config() -> None:
    nested = {k: v for k, v in OLD_DATA.items() if k in ("shards", "mel_bins", "repeated_aug")}
    nested["clip"] = {k: v for k, v in OLD_DATA.items() if k not in nested}
    old = from_dict({"stage": "finetune", "data": OLD_DATA})
    new = from_dict({"stage": "finetune", "data": nested})
    assert to_dict(old) == to_dict(new)
    assert "num_frames" not in to_dict(new)["data"]  # what is written back is the new layout only


def test_a_resumed_old_run_folder_and_old_set_keys(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"stage": "finetune", "data": OLD_DATA}))
    cfg = resolve("finetune", resume_dir=tmp_path, sets=["data.test_crops=2"])
    assert cfg.data.clip.num_frames == 4 and cfg.data.clip.test_crops == 2


def test_an_old_user_yaml(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("stage: pretrain\ndata:\n  num_frames: 8\n  crop_scales: [1.0]\n")
    assert load_yaml(path).data.clip.num_frames == 8
    assert resolve("pretrain", config=str(path)).data.clip.crop_scales == (1.0,)


def test_a_key_given_both_ways_is_refused() -> None:
    with pytest.raises(ConfigError, match="'data.num_frames' is given twice"):
        migrate({"data": {"num_frames": 8, "clip": {"num_frames": 16}}})
    assert migrate({"optim": {"lr": 1.0}}) == {"optim": {"lr": 1.0}}


def test_an_old_checkpoint_predicts_with_its_own_views(tmp_path) -> None:
    """A checkpoint whose stored config has the flat layout rebuilds its model and test views."""
    from avf_models import create_model

    model = create_model("avfmae_pp_tiny", stage="finetune", num_classes=3)
    spec = model.input_spec
    data = {**OLD_DATA, "num_frames": spec.frames, "image_size": spec.image_size}
    data["audio_frames"], data["mel_bins"] = spec.audio_frames, spec.mel_bins
    config = {
        "stage": "finetune",
        "model": {"name": "avfmae_pp_tiny"},
        "data": data,
        "finetune": {"num_classes": 3},
    }
    path = tmp_path / "old.pth"
    ckpt = {"stage": "finetune", "model_name": "avfmae_pp_tiny", "model": model.state_dict(), "config": config}
    torch.save(ckpt, path)
    predictor = load_predictor(path, "cpu", {"test_segments": 2})  # the old override spelling too
    assert (predictor.views.test_segments, predictor.views.test_crops) == (2, 3)
    assert predictor.views.image_size == spec.image_size and predictor.views.sampling_rate == 2
