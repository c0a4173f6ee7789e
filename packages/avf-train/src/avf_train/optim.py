"""AdamW (the official parameter groups) and the learning-rate schedule.

The schedule is a pure function of the optimizer step, so resuming only needs the step count:
linear warmup from ``warmup_lr`` to ``peak`` then half-cosine down to ``min_lr``, the VideoMAE
``cosine_scheduler`` (per optimizer step) that the official scripts use. As there, the global
batch is counted in *clips* (repeated-augmentation copies of a clip do not count), an epoch is
``epoch_size // global_batch`` steps, and ``base_lr``, ``min_lr`` and ``warmup_lr`` are all
scaled by ``global_batch / 256``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import OptimArgs, TrainConfig


def build_optimizer(model: nn.Module, args: OptimArgs, lr: float) -> torch.optim.AdamW:
    """AdamW over ``model`` (pass the unwrapped module: DDP's ``module.`` prefix breaks the names).

    The groups are the official ones (``avf_models.optim.param_groups``: no decay on 1-D tensors,
    biases and the official no-decay names; with layer decay, one ``lr_scale`` per layer id over
    the encoder blocks and the fusion units). ``layer_decay`` 1.0 means no layer-wise decay.
    """
    from avf_models.optim import param_groups

    groups = param_groups(
        model, weight_decay=args.weight_decay, layer_decay=args.layer_decay if args.layer_decay != 1.0 else None
    )
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
        g.pop("names")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(args.betas), eps=args.eps, fused=fused or None)


@dataclass
class CosineSchedule:
    """Warmup + cosine lr as a function of the optimizer step (0-based).

    Step for step the values of VideoMAE's ``cosine_scheduler``: warmup is
    ``linspace(warmup_lr, peak, warmup_steps)``, then ``min_lr + (peak - min_lr)/2 * (1 + cos(pi i / n))``
    over the remaining ``n`` steps.
    """

    peak: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    warmup_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            if self.warmup_steps == 1:
                return self.warmup_lr
            return self.warmup_lr + (self.peak - self.warmup_lr) * step / (self.warmup_steps - 1)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, progress)
        return self.min_lr + 0.5 * (self.peak - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict:
        return {
            "peak": self.peak,
            "min_lr": self.min_lr,
            "warmup_lr": self.warmup_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


@dataclass(frozen=True)
class SchedulePlan:
    """How many steps a run takes and at which learning rates (everything derived from the batch)."""

    global_batch: int  # clips per optimizer step over all ranks and micro-steps
    views_per_step: int  # augmented views per optimizer step (global_batch x repeated_aug)
    steps_per_epoch: int
    total_steps: int
    schedule: CosineSchedule


def plan_schedule(cfg: TrainConfig, epoch_size: int, world_size: int, repeats: int = 1) -> SchedulePlan:
    """Steps and lr schedule of a run over ``epoch_size`` clips on ``world_size`` processes.

    Official semantics: ``total_batch = batch_size x grad_accum x world`` clips, ``lr = base_lr x
    total_batch / 256`` (and the same factor on ``min_lr`` and ``warmup_lr``), ``steps_per_epoch =
    epoch_size // total_batch``. Repeated augmentation multiplies the views a step sees, not the
    batch: 32 clips x 2 copies is a batch of 32 (``repeats``: the stage's views per clip).
    """
    global_batch = cfg.run.batch_size * world_size * max(1, cfg.optim.grad_accum)
    scale = global_batch / 256
    steps_per_epoch = max(1, epoch_size // global_batch)
    total_steps = max(1, int(round(cfg.run.epochs * steps_per_epoch)))
    o = cfg.optim
    warmup = o.warmup_steps if o.warmup_steps >= 0 else int(round(o.warmup_epochs * steps_per_epoch))
    peak = o.lr if o.lr > 0 else o.base_lr * scale
    schedule = CosineSchedule(
        peak=peak,
        min_lr=min(o.min_lr * scale, peak),
        warmup_steps=warmup,
        total_steps=total_steps,
        warmup_lr=min(o.warmup_lr * scale, peak),
    )
    return SchedulePlan(global_batch, global_batch * repeats, steps_per_epoch, total_steps, schedule)
