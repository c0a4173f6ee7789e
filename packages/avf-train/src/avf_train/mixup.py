"""Targets of the supervised stages: label smoothing, Mixup and CutMix (timm semantics).

The official fine-tuning code mixes the video only (its Mixup is applied to the frames, the audio
fbank goes in unmixed) and mixes the targets to match; ``finetune.mix_audio`` also mixes the fbank
with the same lambda. Randomness comes from an explicit generator seeded by (seed, rank, step,
micro-step), so a resumed run draws the same boxes and lambdas.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .errors import StageError


def mix_targets(
    batch: dict[str, Any], cfg: TrainConfig, num_classes: int, rng: np.random.Generator, train: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(video, audio, target)`` of a batch: Mixup/CutMix pairs clip i with clip B-1-i.

    CutMix pastes one box into every frame and corrects lambda by the box's real area.
    Classification targets are label-smoothed one-hots; DEA regression targets are mixed
    linearly without smoothing.
    """
    video, audio = batch["video"], batch["audio"]
    f = cfg.finetune
    if f.task == "dea":
        if "targets" not in batch:
            raise StageError("task dea needs 'targets' (a list of floats) in the clips' metadata")
        target = batch["targets"]
    else:
        off = f.label_smoothing / num_classes
        labels = batch["label"]
        if labels.min() < 0 or labels.max() >= num_classes:
            raise StageError(
                f"labels {labels.tolist()} outside [0, {num_classes}); check --num-classes and the label map"
            )
        target = torch.full((len(labels), num_classes), off)
        target.scatter_(1, labels[:, None], 1.0 - f.label_smoothing + off)
    if not train or (f.mixup <= 0 and f.cutmix <= 0) or rng.random() >= f.mixup_prob or len(video) < 2:
        return video, audio, target
    use_cutmix = f.cutmix > 0 and (f.mixup <= 0 or rng.random() < f.mixup_switch_prob)
    lam = float(rng.beta(f.cutmix, f.cutmix) if use_cutmix else rng.beta(f.mixup, f.mixup))
    if use_cutmix:
        h, w = video.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        video = video.clone()
        video[..., y0:y1, x0:x1] = video.flip(0)[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        video = video * lam + video.flip(0) * (1.0 - lam)
    if f.mix_audio:
        audio = audio * lam + audio.flip(0) * (1.0 - lam)
    target = target * lam + target.flip(0) * (1.0 - lam)
    return video, audio, target
