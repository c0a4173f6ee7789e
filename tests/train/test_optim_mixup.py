"""Layer-wise lr decay groups and the Mixup/CutMix targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avf_train.config import stage_defaults
from avf_train.mixup import mix_targets
from avf_train.optim import build_optimizer


def test_optimizer_uses_the_official_groups_on_the_tiny_finetune_model():
    from avf_models import create_model

    model = create_model("avfmae_pp_tiny", stage="finetune", num_classes=3)
    args = stage_defaults("finetune").optim
    optimizer = build_optimizer(model, args, lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in optimizer.param_groups for p in g["params"]}
    top = 2 + 2 + 1  # depth 2, fusion depth 2 (official layer ids)
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.75**top)
    assert by_name["encoder.patch_embed.proj.weight"]["lr"] == pytest.approx(1e-3 * 0.75**top)
    assert by_name["encoder.blocks.1.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.75 ** (top - 2))
    assert by_name["head.weight"]["lr_scale"] == 1.0
    assert by_name["head.bias"]["weight_decay"] == 0.0 and by_name["head.weight"]["weight_decay"] == 0.05
    assert len(by_name) == sum(1 for p in model.parameters() if p.requires_grad)
    # no layer-wise decay at all with layer_decay 1.0 (pre-training)
    args.layer_decay = 1.0
    assert {g["lr_scale"] for g in build_optimizer(model, args, lr=1e-3).param_groups} == {1.0}


def test_mixup_and_cutmix_targets_are_distributions():
    cfg = stage_defaults("finetune")
    batch = {
        "video": torch.randn(4, 3, 2, 8, 8),
        "audio": torch.randn(4, 1, 16, 8),
        "label": torch.tensor([0, 1, 2, 1]),
    }
    for seed in range(6):  # covers both branches (switch prob 0.5)
        video, audio, target = mix_targets(batch, cfg, 3, np.random.default_rng(seed))
        assert video.shape == batch["video"].shape and audio.shape == batch["audio"].shape
        assert torch.allclose(target.sum(-1), torch.ones(4))
        assert torch.equal(audio, batch["audio"])  # official: the audio is not mixed
    cfg.finetune.mixup = cfg.finetune.cutmix = 0.0
    _, _, target = mix_targets(batch, cfg, 3, np.random.default_rng(0))
    assert target[0].tolist() == pytest.approx([1 - 0.1 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
