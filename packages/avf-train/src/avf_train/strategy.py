"""What differs between the stages, decided once: the training loop has no stage branches.

Self-supervised pre-training and the two supervised stages (post-pre-training, fine-tuning)
share the loop in ``trainer.py``. They differ in what a batch is (one view per clip and the
device-side pre-training crops, or ``data.repeated_aug`` augmented views per clip), what the
shards must hold (labels and a label map, or nothing), how the model starts (``--init``) and
the loss (the pre-training model returns its own; the supervised one is called on
Mixup/CutMix-mixed views and scored by ``compute_loss``). torchtitan's shape: the stage picks
one of these objects (``trainer.strategy_for``) and the loop calls it. The sync expert's
strategy derives from ``Pretraining`` in ``sync_expert.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .config import TrainConfig
from .data import ClipStream, StreamState, model_inputs, resolve_shards
from .labels import run_labels
from .mixup import mix_targets
from .modeling import build_model, init_from, model_from_init, num_classes_for
from .preflight import resolve_labels
from .shardinfo import ShardInfo, scan_shards
from .transforms import transform_config

Log = Callable[[str], None]


class Pretraining:
    """AVF-MAE++ self-supervised pre-training: unlabelled clips, one view each, the model's own loss."""

    mode = "pretrain"
    repeats = 1  # views of a clip in one batch
    labelled = False

    def __init__(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        self.cfg, self.info = cfg, info

    def check_data(self, train: ShardInfo, log: Log) -> None:
        """Pre-training takes any shards: nothing to resolve."""

    def start_model(self, model: nn.Module | None, resumed: bool, log: Log) -> None:
        """Pre-training starts from random weights (or the resumed checkpoint)."""

    def stream_options(self) -> dict[str, Any]:
        return {"labels": None, "labelled": False, "num_classes": 0, "device_features": True}

    def build_model(self) -> nn.Module:
        """The avf-models network of the stage (pre-training model, or the supervised one)."""
        return build_model(self.cfg)

    def stream(self, shards: list[str], state: StreamState | None) -> ClipStream:
        """This rank's share of the training clips, resumed at ``state``."""
        cfg = self.cfg
        return ClipStream(
            shards,
            transform_config(cfg, self.mode),
            cfg.run.batch_size,
            train=True,
            seed=cfg.run.seed,
            rank=self.info.rank,
            world_size=self.info.world_size,
            num_workers=cfg.data.num_workers,
            shuffle_buffer=cfg.data.shuffle_buffer,
            repeats=self.repeats,
            state=state,
            **self.stream_options(),
        )

    def loss(
        self, model: nn.Module, forward: nn.Module, batch: dict[str, Any], step: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, its parts to log) of one micro-batch; the pre-training views are finished on the device."""
        video, audio = model_inputs(batch, self.info.device)
        out = forward(video, audio)
        return out["loss"], {k: out[k] for k in ("loss_video", "loss_audio", "loss_contrastive")}


class Supervised(Pretraining):
    """Post-pre-training and fine-tuning: labelled clips, ``repeated_aug`` views each, Mixup/CutMix."""

    labelled = True

    def __init__(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        super().__init__(cfg, info)
        self.mode = "finetune"
        self.repeats = max(1, cfg.data.repeated_aug)
        self.classify = cfg.finetune.task != "dea"
        self.num_classes = 0

    def check_data(self, train: ShardInfo, log: Log) -> None:
        """Resolve the label map against the shards (and ``--val-data``) before any worker starts."""
        cfg = self.cfg
        val = scan_shards(resolve_shards(cfg.data.val_shards), read_meta=True) if cfg.data.val_shards else None
        labels = resolve_labels(cfg, train, val)
        if labels is not None:
            space = labels.space
            log(f"label map: {space.num_classes} classes {list(space.classes)} ({space.title})")
        self.num_classes = num_classes_for(cfg)

    def start_model(self, model: nn.Module | None, resumed: bool, log: Log) -> None:
        """Before the model exists (``model`` None): adopt the ``--init`` checkpoint's architecture;
        after: load its weights, or say that the supervised model starts from random weights."""
        if resumed:
            return
        if model is None:
            model_from_init(self.cfg, log)
        elif self.cfg.finetune.init:
            init_from(model, self.cfg, log)
        else:
            log("warning: no --init given; training the supervised model from random initialisation")

    def stream_options(self) -> dict[str, Any]:
        return {
            "labels": run_labels(self.cfg) if self.classify else None,
            "labelled": True,
            "num_classes": self.cfg.finetune.num_classes if self.classify else 0,
            "device_features": False,
        }

    def loss(
        self, model: nn.Module, forward: nn.Module, batch: dict[str, Any], step: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, no parts) of one micro-batch of Mixup/CutMix-mixed views (seeded by rank, step, micro)."""
        device = self.info.device
        rng = np.random.default_rng([self.cfg.run.seed, self.info.rank, step, micro])
        video, audio, target = mix_targets(batch, self.cfg, self.num_classes, rng)
        outputs = forward(video.to(device), audio.to(device))
        return D.unwrap(model).compute_loss(outputs, target.to(device)), {}
