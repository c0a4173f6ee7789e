"""Layer-wise lr decay groups and the Mixup/CutMix targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avf_train.config import stage_defaults
from avf_train.optim import layer_id, model_param_groups, param_groups
from avf_train.trainer import mix_targets


def test_layer_decay_groups_on_the_tiny_finetune_model():
    from avf_models import create_model

    model = create_model("avfmae_pp_tiny", stage="finetune", num_classes=3)
    groups = model_param_groups(model, weight_decay=0.05, layer_decay=0.75)
    by_name = {n: g for g in groups for n in g["names"]}
    top = 2 + 2 + 1  # depth 2, fusion depth 2 (official layer ids)
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.75 ** top)
    assert by_name["encoder.blocks.1.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.75 ** (top - 2))
    assert by_name["head.weight"]["lr_scale"] == 1.0
    assert by_name["head.bias"]["weight_decay"] == 0.0 and by_name["head.weight"]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    # generic fallback for other networks
    generic = {n: g for g in param_groups(model, 0.05, 0.75) for n in g["names"]}
    assert generic["encoder.blocks.1.mlp.fc1.weight"]["lr_scale"] == 0.75
    assert layer_id("encoder_fusion.blocks.0.attn.q.weight", 2) == 3
    # no decay groups at all without layer decay
    assert {g["lr_scale"] for g in model_param_groups(model, 0.05, 1.0)} == {1.0}


def test_mixup_and_cutmix_targets_are_distributions():
    cfg = stage_defaults("finetune")
    batch = {"video": torch.randn(4, 3, 2, 8, 8), "audio": torch.randn(4, 1, 16, 8),
             "label": torch.tensor([0, 1, 2, 1])}
    for seed in range(6):  # covers both branches (switch prob 0.5)
        video, audio, target = mix_targets(batch, cfg, 3, np.random.default_rng(seed))
        assert video.shape == batch["video"].shape and audio.shape == batch["audio"].shape
        assert torch.allclose(target.sum(-1), torch.ones(4))
        assert torch.equal(audio, batch["audio"])  # official: the audio is not mixed
    cfg.finetune.mixup = cfg.finetune.cutmix = 0.0
    _, _, target = mix_targets(batch, cfg, 3, np.random.default_rng(0))
    assert target[0].tolist() == pytest.approx([1 - 0.1 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
