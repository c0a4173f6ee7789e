"""Models from configs and checkpoints: building for training, ``--init``, and inference.

The training loop (``trainer``), ``avf-train predict`` (``predict_shards``) and ``avf-eval
predict`` all get their networks here, so a checkpoint is rebuilt and run one way everywhere.
The supervised models are avf-models' ``AVFMAEFinetune``: ``model(video, audio)`` is the forward
of every modality (a video-only or audio-only model ignores the other input) and
``model.compute_loss`` the loss (soft-target cross-entropy, or MSE for DEA).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import checkpoint as ckpt_io
from . import distributed as D
from .config import ConfigError, TrainConfig, from_dict, resolve_model_name, update
from .errors import StageError
from .labels import run_labels
from .preflight import check_init_classes
from .transforms import transform_config

if TYPE_CHECKING:
    from .transforms import ClipTransformConfig

# --------------------------------------------------------------------------- building


def task_head(cfg: TrainConfig) -> dict[str, Any]:
    """create_model keyword arguments for the supervised head of ``cfg``."""
    if cfg.stage == "pretrain":
        return {}
    kw: dict[str, Any] = {"modality": cfg.model.modality}
    if cfg.finetune.task == "dea":
        kw.update(task="regression")
    return kw


def num_classes_for(cfg: TrainConfig) -> int:
    """Outputs of the supervised head: ``finetune.num_classes``, else the label map's size."""
    if cfg.finetune.num_classes > 0:
        return cfg.finetune.num_classes
    labels = run_labels(cfg)
    if labels is not None:
        return labels.space.num_classes
    raise StageError("set --num-classes (finetune.num_classes): it cannot be inferred without a label map")


def build_model(cfg: TrainConfig) -> nn.Module:
    """The avf-models network of ``cfg`` (pre-training model, or fine-tuning model with its head)."""
    from avf_models import create_model

    name = resolve_model_name(cfg.model.name)
    overrides = dict(cfg.model.overrides)
    if cfg.model.drop_path is not None:
        overrides["drop_path_rate"] = cfg.model.drop_path
    if cfg.stage == "pretrain":
        return create_model(name, stage="pretrain", **overrides)
    overrides.update(task_head(cfg))
    return create_model(name, stage="finetune", num_classes=num_classes_for(cfg), **overrides)


def check_input_spec(model: nn.Module, cfg: TrainConfig) -> None:
    """Fail before training or predicting when the data settings would feed the model the wrong shapes."""
    spec = getattr(D.unwrap(model), "input_spec", None)
    if spec is None:
        return
    want = (spec.frames, spec.image_size, spec.audio_frames, spec.mel_bins)
    clip = cfg.data.clip
    got = (clip.num_frames, clip.image_size, clip.audio_frames, cfg.data.mel_bins)
    if want != got:
        raise StageError(
            f"shape mismatch: model {cfg.model.name} expects frames/image/audio-frames/mel-bins "
            f"{want}, the data config gives {got}; fix data.* or the model overrides"
        )


# --------------------------------------------------------------------------- --init


def model_from_init(cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """With no --model, a supervised stage builds the architecture its --init checkpoint was
    trained with (name and ModelConfig overrides such as depth), so the chain needs no repetition."""
    if cfg.model.name or cfg.stage == "pretrain" or not cfg.finetune.init:
        return
    ckpt = ckpt_io.load(cfg.finetune.init)
    name = ckpt.get("model_name")
    if not name:
        raise StageError(f"--init {ckpt['path']} does not record its model; pass --model")
    saved = (ckpt.get("config") or {}).get("model", {}).get("overrides", {}) or {}
    cfg.model.name = name
    cfg.model.overrides = {**saved, **cfg.model.overrides}
    log(f"model {name} (from --init)")


PARTIAL_INIT_HINT = (
    "give the model the checkpoint's architecture (--model, --set model.overrides.depth=N), or pass "
    "--allow-partial-init (--set finetune.allow_partial_init=true) to load only the blocks both have"
)


def init_from(model: nn.Module, cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """Load ``finetune.init`` into a supervised model, refusing checkpoints of the wrong stage and,
    unless ``finetune.allow_partial_init``, backbones whose blocks differ from the model's (a silently
    truncated backbone trains without any sign of what was lost)."""
    from avf_models import PartialInitError, load_pretrained_into_finetune

    ckpt = ckpt_io.load(cfg.finetune.init)
    stage = ckpt.get("stage", "unknown")
    allowed = {"postpretrain": ("pretrain", "unknown"), "finetune": ("pretrain", "postpretrain", "unknown")}
    if stage not in allowed.get(cfg.stage, ()):
        raise StageError(
            f"--init {ckpt['path']} is a {stage!r} checkpoint; {cfg.stage} starts from "
            f"{' or '.join(s for s in allowed.get(cfg.stage, ()) if s != 'unknown')} checkpoints"
        )
    note = check_init_classes(cfg, ckpt)
    if note:
        log(note)
    try:
        report = load_pretrained_into_finetune(model, ckpt["model"], allow_partial=cfg.finetune.allow_partial_init)
    except PartialInitError as exc:  # blocks one side lacks: name them and this CLI's opt-in
        raise StageError(
            f"cannot load {ckpt['path']} into {cfg.model.name}: {exc.describe(PARTIAL_INIT_HINT)}"
        ) from exc
    except Exception as exc:  # shape mismatch etc.: say which file and model
        raise StageError(f"cannot load {ckpt['path']} into {cfg.model.name}: {exc}") from exc
    log(f"init from {ckpt['path']} ({stage}): {report.summary()}")


# --------------------------------------------------------------------------- inference


def inference_config(ckpt: dict[str, Any]) -> TrainConfig:
    """The config a supervised checkpoint (as returned by ``checkpoint.load``) was trained with.

    avf-train checkpoints store it under ``config``. An exported checkpoint without one (a dict
    with ``model_name``, ``model`` and optionally ``num_classes``, ``task`` = ``classification`` /
    ``regression``, ``modality`` and ``model_overrides``) gets the fine-tuning defaults for that
    model; its number of outputs is ``num_classes`` or the rows of ``head.weight``. So does a
    fine-tuned checkpoint from ``avf-models convert``, whose ``config`` is the avf-models
    ``ModelConfig`` of its named size.
    """
    if isinstance(ckpt.get("config"), dict) and "embed_dim" not in ckpt["config"]:
        try:
            return from_dict(ckpt["config"])
        except ConfigError as exc:
            raise StageError(f"{ckpt['path']}: its stored config is not an avf-train config ({exc})") from None
    name = ckpt.get("model_name")
    if not name:
        raise StageError(
            f"{ckpt['path']}: no 'config' and no 'model_name'; predict needs a dict with "
            "'model_name' and 'model' (state dict)"
        )
    overrides = dict(ckpt.get("model_overrides") or {})
    modality = overrides.pop("modality", None) or ckpt.get("modality") or "av"
    regression = "regression" in (ckpt.get("task"), overrides.pop("task", None))
    num_classes = int(ckpt.get("num_classes") or 0)
    if num_classes <= 0:
        head = ckpt["model"].get("head.weight")
        if head is None:
            raise StageError(f"{ckpt['path']}: cannot tell the number of outputs (no 'num_classes', no head.weight)")
        num_classes = int(head.shape[0])
    return from_dict(
        {
            "model": {"name": str(name), "modality": modality, "overrides": overrides},
            "finetune": {"task": "dea" if regression else "cea", "num_classes": num_classes},
        },
        stage="finetune",
    )


@dataclass(frozen=True)
class Predictor:
    """A supervised model in eval mode with what it was trained on: the one inference path.

    ``views`` are the test views (``data.clip.test_segments`` x ``data.clip.test_crops``) its clips are cut
    into; calling it runs the forward on a batch of views and returns float outputs on the CPU.
    """

    model: nn.Module
    config: TrainConfig
    checkpoint: dict[str, Any]  # as ``checkpoint.load`` returns it, with ``path``
    device: torch.device

    @property
    def path(self) -> str:
        return str(self.checkpoint["path"])

    @property
    def model_name(self) -> str:
        return resolve_model_name(self.config.model.name)

    @property
    def regression(self) -> bool:
        return self.config.finetune.task == "dea"

    @property
    def num_outputs(self) -> int:
        return num_classes_for(self.config)

    @property
    def views(self) -> ClipTransformConfig:
        return transform_config(self.config, "test")

    def names(self) -> tuple[tuple[str, ...], str]:
        """The outputs' names and where they come from (``"checkpoint"`` or ``"training label map"``);
        ``((), "")`` when neither names them. Regression names are the checkpoint's ``dimensions``."""
        if self.regression:
            dims = self.checkpoint.get("dimensions") or ()
            return tuple(str(d) for d in dims), "checkpoint" if dims else ""
        stored = self.checkpoint.get("class_names")
        if stored:
            return tuple(str(n) for n in stored), "checkpoint"
        try:
            labels = run_labels(self.config)
        except ValueError:  # a label-map YAML of the training machine
            labels = None
        if labels is None:
            return (), ""
        return labels.space.classes, "checkpoint" if isinstance(
            self.config.data.label_map, dict
        ) else "training label map"

    @torch.no_grad()
    def __call__(self, video: torch.Tensor, audio: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        """Logits (classification) or outputs (regression) of a batch of views, float32 on the CPU."""
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with autocast:
            out = self.model(video.to(self.device), audio.to(self.device))
        return out.float().cpu()


def load_predictor(
    path: str | os.PathLike, device: str | torch.device, data_overrides: dict[str, Any] | None = None
) -> Predictor:
    """Rebuild a supervised model from a checkpoint file or run folder and load its weights.

    ``data_overrides`` (``data.*`` fields, e.g. ``{"clip": {"test_segments": 1}}``) change the test views.
    Pre-training checkpoints and bare state dicts are refused with a :class:`StageError` that says
    why; so is a data config that would feed the model the wrong shapes.
    """
    ckpt = ckpt_io.load(path)
    if ckpt.get("format") == 0 and "model_name" not in ckpt:
        raise StageError(
            f"{ckpt['path']} is a bare state dict; predict needs a dict with 'model_name' and "
            "'model' (state dict), such as an avf-train checkpoint"
        )
    stage = ckpt.get("stage", None if isinstance(ckpt.get("config"), dict) else "finetune")
    if stage not in ("postpretrain", "finetune"):
        raise StageError(
            f"{ckpt['path']} is a {stage!r} checkpoint; predict needs a post-pre-trained "
            "or fine-tuned one (pre-training checkpoints have no classifier head)"
        )
    cfg = inference_config(ckpt)
    if data_overrides:
        update(cfg.data, data_overrides, prefix="data.")
    cfg.model.drop_path = 0.0
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # missing/unexpected keys, shape mismatch: say which file and model
        raise StageError(
            f"cannot load {ckpt['path']} into {resolve_model_name(cfg.model.name)}: {' '.join(str(exc).split())}"
        ) from exc
    check_input_spec(model, cfg)
    device = torch.device(device)
    return Predictor(model.to(device).eval(), cfg, ckpt, device)
