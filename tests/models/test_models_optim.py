"""Official parameter-group rules: weight-decay exemptions and layer-wise lr decay."""

from __future__ import annotations

import torch

from avf_models import create_model
from avf_models.optim import layer_id, param_groups


def test_layer_ids() -> None:
    assert layer_id("encoder.patch_embed.proj.weight", 10, 2) == 0
    assert layer_id("encoder_audio.blocks.3.mlp.fc1.weight", 10, 2) == 4
    assert layer_id("encoder_fusion.blocks.1.lv1.weight", 10, 2) == 12
    assert layer_id("encoder_fusion.er.post_extract_proj.weight", 10, 2) == 13
    assert layer_id("head.weight", 10, 2) == 13
    assert layer_id("encoder.lg_region_tokens", 10, 2) == 13


def test_param_groups_finetune_layer_decay() -> None:
    with torch.device("meta"):
        model = create_model("avfmae_pp_base", "finetune", num_classes=7)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)
    names = {n: g for g in groups for n in g["names"]}
    assert len(names) == len(list(model.parameters()))
    assert names["encoder.blocks.0.mlp.fc1.weight"]["weight_decay"] == 0.05
    assert names["encoder.blocks.0.mlp.fc1.bias"]["weight_decay"] == 0.0
    assert names["layer_weights_video"]["weight_decay"] == 0.0  # 1-D
    assert names["encoder.lg_region_tokens"]["weight_decay"] == 0.05  # official quirk: decayed
    assert names["head.weight"]["lr_scale"] == 1.0
    assert abs(names["encoder.patch_embed.proj.weight"]["lr_scale"] - 0.75**13) < 1e-12
    torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=1e-3)


def test_param_groups_pretrain_mask_tokens() -> None:
    with torch.device("meta"):
        model = create_model("avfmae_pp_base")
    names = {n: g for g in param_groups(model) for n in g["names"]}
    assert names["mask_token"]["weight_decay"] == 0.0
    assert names["mask_token_audio"]["weight_decay"] == 0.05  # official quirk
