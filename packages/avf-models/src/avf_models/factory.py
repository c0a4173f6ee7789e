"""``create_model``: the one way to build a network by name (avf-train's ``modeling`` builds every model through it)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from .config import CONFIGS, get_config
from .finetune import AVFMAEFinetune
from .pretrain import AVFMAEPretrain

MODEL_NAMES: tuple[str, ...] = tuple(CONFIGS)


def create_model(
    name: str, stage: Literal["pretrain", "finetune"] = "pretrain", num_classes: int | None = None, **overrides: object
) -> nn.Module:
    """Build a model by name: avfmae_pp_tiny | avfmae_pp_base | avfmae_pp_large | avfmae_pp_huge |
    hicmae_base.

    ``stage="pretrain"`` returns ``AVFMAEPretrain``; ``stage="finetune"`` returns ``AVFMAEFinetune`` with
    drop_path_rate 0.1 unless overridden.  ``overrides`` are ``ModelConfig`` fields (e.g.
    ``modality="video"``, ``task="regression"``, ``head_activation="tanh"``, ``depth=4``).  To build
    without allocating memory (e.g. to count parameters) wrap the call in ``with torch.device("meta"):``.
    """
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if stage == "finetune":
        overrides.setdefault("drop_path_rate", 0.1)
        return AVFMAEFinetune(get_config(name, **overrides))
    return AVFMAEPretrain(get_config(name, **overrides))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BatchNorm statistics are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
