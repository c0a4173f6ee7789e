"""Typed run configurations for the three training stages, loadable from YAML and overridable.

One :class:`TrainConfig` describes a whole run. Its defaults are the paper's Base settings for the
stage (Table 5 for pre-training, Table 6 for post-pre-training and fine-tuning), so a run needs only
the data, the output folder and the model size; everything else is a dotted override such as
``--set optim.lr=1e-4``. The resolved config is written to ``RUN/config.yaml`` and stored (as plain
types) in every checkpoint, which is what lets ``--resume`` and ``--init`` check what they load.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Stage = Literal["pretrain", "postpretrain", "finetune"]
STAGES: tuple[str, ...] = ("pretrain", "postpretrain", "finetune")
MODEL_SIZES: tuple[str, ...] = ("tiny", "base", "large", "huge")


@dataclass
class ModelArgs:
    """Which avf-models network to build, plus keyword overrides passed to ``create_model``."""

    # "" = the model of the --init checkpoint (supervised stages), else avfmae_pp_base;
    # or a size alias: tiny | base | large | huge, or any avf-models name such as hicmae_base
    name: str = ""
    drop_path: float | None = None  # None: the model's stage default (0.1 when fine-tuning)
    modality: Literal["av", "audio", "video"] = "av"  # uni-modal fine-tuning variants
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataArgs:
    """Where clips come from and how they are turned into model inputs (ARCH_SPEC §2, §3)."""

    shards: str = ""  # glob, folder or single .tar; comma-separated for several
    val_shards: str = ""  # optional held-out shards for evaluation/predict after training
    num_frames: int = 16
    sampling_rate: int = 4  # frame stride: 16 x 4 = 64 source frames (2.56 s at 25 fps)
    image_size: int = 160
    audio_frames: int = 256
    mel_bins: int = 128
    crop_scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)  # MultiScaleCrop (pre-training)
    audio_gain_aug: bool = True  # AudioMAE "roll+mag": effectively a gain of Beta(10,10)+0.5
    # fine-tuning augmentation (ignored in pre-training)
    rand_augment: str = "rand-m7-n4-mstd0.5-inc1"  # official timm spec (magnitude 7, 4 ops); "" disables
    random_resized_crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    random_erase: float = 0.25
    # each clip yields this many differently-augmented copies in the same batch (Table 6; official
    # --num_sample): a batch of run.batch_size clips holds batch_size x repeated_aug views
    repeated_aug: int = 2
    # label handling (labelled stages)
    label_map: str = ""  # "" = the shards' own label map; "cea13" / "mer3" = paper Table 3 alignment; or a YAML path
    # class names of the model's outputs in index order. Empty: taken from the shards' label map
    # (``avf-data import`` stores it in every sample and in classes.json); set (or resumed), the
    # shards must carry the same map. Copied into checkpoints and predictions.
    classes: tuple[str, ...] = ()
    label_protocol: str = ""  # the avf-eval protocol the shards' label map comes from, if any
    # streaming
    shuffle_buffer: int = 256
    num_workers: int = 4
    epoch_size: int = 0  # clips per nominal epoch; 0 = count the samples in the shards
    # test-time views (Table 6): segments along time x crops along the long side
    test_segments: int = 2
    test_crops: int = 2


@dataclass
class OptimArgs:
    """AdamW with linear lr scaling, warmup + cosine decay, optional layer-wise lr decay."""

    base_lr: float = 1.5e-4  # lr = base_lr * global_batch / 256 unless ``lr`` is set
    lr: float = 0.0  # absolute lr; 0 = derive from base_lr
    # end of the cosine and start of the linear warmup; like base_lr these are scaled by
    # global_batch / 256 (global batch in clips), as the official scripts scale them
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_epochs: float = 20.0
    warmup_steps: int = -1  # >= 0 overrides warmup_epochs
    layer_decay: float = 1.0  # 0.75 for the labelled stages
    clip_grad: float = 0.0  # 0 = off; 0.7 for Huge
    grad_accum: int = 1


@dataclass
class FinetuneArgs:
    """Supervised-stage settings (Table 6 and the official fine-tuning defaults)."""

    task: Literal["cea", "dea", "mer"] = "cea"
    num_classes: int = 0  # 0 = infer from the label map or the data
    mixup: float = 0.8
    cutmix: float = 1.0  # official default, not listed in Table 6
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mix_audio: bool = False  # official code mixes only the video (labels mixed); True mixes audio too
    label_smoothing: float = 0.1
    init: str = ""  # checkpoint (or run folder) to start from


@dataclass
class RunArgs:
    """Run bookkeeping: where outputs go, how long, how often to log and save."""

    out: str = ""
    # clips per process per micro-step (official meaning); supervised stages feed
    # batch_size x data.repeated_aug augmented views to the model
    batch_size: int = 8
    epochs: float = 200.0
    max_steps: int = 0  # > 0 caps the run (tests, smoke runs); schedules still span ``epochs``
    seed: int = 0
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10
    save_every: int = 1000  # optimizer steps
    keep_last: int = 3
    tensorboard: bool = True
    fsdp: bool = False  # FSDP2 instead of DDP (used for Huge)
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient
    compile: bool = False


@dataclass
class TrainConfig:
    """Everything one training run needs; ``stage`` picks the loop and the defaults."""

    stage: Stage = "pretrain"
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    finetune: FinetuneArgs = field(default_factory=FinetuneArgs)
    run: RunArgs = field(default_factory=RunArgs)


def stage_defaults(stage: Stage) -> TrainConfig:
    """The paper's Base settings for ``stage`` (Table 5, Table 6 "Post" / "Targeted" columns)."""
    cfg = TrainConfig(stage=stage)
    if stage == "pretrain":
        cfg.run.batch_size, cfg.run.epochs = 164, 200.0  # per GPU in the official scripts (8 GPUs)
        cfg.data.repeated_aug = 1
        return cfg
    cfg.optim = OptimArgs(base_lr=1e-3 if stage == "postpretrain" else 5e-4, betas=(0.9, 0.999),
                          warmup_epochs=5.0, layer_decay=0.75, min_lr=1e-6)
    cfg.run.batch_size, cfg.run.epochs = 32, 100.0
    if stage == "postpretrain":
        cfg.data.label_map = "cea13"
    return cfg


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML and ``torch.save``."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value
    return plain(cfg)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, with an error naming the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{where}: cannot interpret {value!r} as {annotation}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        items = list(value)
        if args and args[-1] is not Ellipsis and len(items) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {items!r}")
        kinds = [args[0]] * len(items) if args and args[-1] is Ellipsis else list(args)
        return tuple(_coerce(v, k, where) for v, k in zip(items, kinds))
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{where}: {value!r} is not a boolean")
        return bool(value)
    if annotation is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{where}: {value!r} is not an integer")
        return int(float(value)) if isinstance(value, str) else int(value)
    if annotation is float:
        return float(value)
    if annotation is str:
        return "" if value is None else str(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def update(cfg: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Recursively set fields of dataclass ``cfg`` from a nested dict; unknown keys are errors."""
    hints = _hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise KeyError(f"unknown config field {where!r}; known: {sorted(names)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where} is a section; give a mapping, not {value!r}")
            update(current, value, prefix=f"{where}.")
        else:
            setattr(cfg, key, _coerce(value, hints[key], where))
    return cfg


def set_dotted(cfg: TrainConfig, assignment: str) -> None:
    """Apply one ``section.field=value`` override (the value is parsed as YAML)."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like section.field=value")
    path, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    nested: dict[str, Any] = {}
    node = nested
    parts = path.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    update(cfg, nested)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from a (possibly partial) nested dict on top of its stage's defaults."""
    cfg = stage_defaults(values.get("stage", "pretrain"))
    return update(cfg, values)


def load_yaml(path: str | Path) -> TrainConfig:
    with open(path) as fh:
        return from_dict(yaml.safe_load(fh) or {})


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def resolve_model_name(name: str) -> str:
    """Accept the CLI's size aliases (tiny/base/large/huge) as well as full registry names."""
    if not name:
        return "avfmae_pp_base"
    return f"avfmae_pp_{name}" if name in MODEL_SIZES else name
