"""Optimizer parameter groups as the official fine-tuning code builds them: weight-decay
exemptions and layer-wise learning-rate decay for fine-tuning."""

from __future__ import annotations

import re

from torch import nn

# The official no_weight_decay() returns bare names that match only top-level parameters exactly;
# region tokens (encoder.lg_region_tokens) and mask_token_audio therefore *are* decayed there.
OFFICIAL_NO_DECAY = frozenset({"pos_embed", "cls_token", "mask_token", "lg_region_tokens", "part_tokens"})


def layer_id(name: str, depth: int, fusion_depth: int) -> int:
    """Layer index for layer-wise lr decay: patch embeddings 0, encoder block i -> i+1, fusion unit i
    -> depth+i+1, everything else (region tokens, ER, HAFE, head, layer weights) the top id depth+fusion+1."""
    if re.match(r"encoder(_audio)?\.patch_embed\.", name):
        return 0
    m = re.match(r"encoder(_audio)?\.blocks\.(\d+)\.", name)
    if m:
        return int(m.group(2)) + 1
    m = re.match(r"encoder_fusion\.blocks\.(\d+)\.", name)
    if m:
        return depth + int(m.group(1)) + 1
    return depth + fusion_depth + 1


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.05,
    layer_decay: float | None = None,
    extra_no_decay: frozenset[str] = OFFICIAL_NO_DECAY,
) -> list[dict]:
    """Parameter groups for AdamW.

    No weight decay for 1-D tensors, biases and names that *exactly* equal an entry of
    ``extra_no_decay`` (official behaviour).  With ``layer_decay`` (0.75 in the official fine-tuning),
    each group carries ``lr_scale = layer_decay ** (num_layers + 1 - layer_id)`` where num_layers =
    max(video depth, audio depth) + fusion depth; multiply your lr by it.
    """
    cfg = getattr(model, "config", None)
    depth = max(getattr(cfg, "depth", 0), getattr(cfg, "depth_audio", 0))
    fusion = getattr(cfg, "fusion_depth", 0) if hasattr(model, "encoder_fusion") else 0
    num_layers = depth + fusion
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name.endswith(".bias") or name in extra_no_decay
        lid = layer_id(name, depth, fusion) if layer_decay is not None else 0
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid) if layer_decay is not None else 1.0
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]
