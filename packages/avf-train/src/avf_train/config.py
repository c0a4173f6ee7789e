"""Typed run configurations for the three training stages, loadable from YAML and overridable.

One :class:`TrainConfig` describes a whole run. Its defaults are the paper's Base settings for the
stage (Table 5 for pre-training, Table 6 for post-pre-training and fine-tuning), so a run needs only
the data, the output folder and the model size; everything else is a dotted override such as
``--set optim.lr=1e-4``. The resolved config is written to ``RUN/config.yaml`` and stored (as plain
types) in every checkpoint, which is what lets ``--resume`` and ``--init`` check what they load.

Reading, merging and type conversion are avf-data's :mod:`avf_data.settings`, the one config
mechanism of avf: values are converted to each field's declared type by one rule (booleans must
be YAML booleans, ``--set`` values are parsed as YAML) and every problem is a :class:`ConfigError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from avf_data.settings import ConfigError, merge, parse_set, read_yaml, to_dict, update

if TYPE_CHECKING:
    from .transforms import ClipTransformConfig

__all__ = [
    "ClipArgs",
    "ConfigError",
    "DataArgs",
    "FinetuneArgs",
    "ModelArgs",
    "OptimArgs",
    "RunArgs",
    "TrainConfig",
    "config_path",
    "from_dict",
    "load_yaml",
    "parse_override",
    "resolve",
    "resolve_model_name",
    "save_yaml",
    "stage_defaults",
    "to_dict",
    "transform_config",
]

Stage = Literal["pretrain", "postpretrain", "finetune"]
STAGES: tuple[str, ...] = ("pretrain", "postpretrain", "finetune")
MODEL_SIZES: tuple[str, ...] = ("tiny", "base", "large", "huge")
SHIPPED = Path(__file__).parent / "configs"  # the --config recipes, by name


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
class ClipArgs:
    """How one clip becomes a model input: the ``data.clip`` section of an avf-train config.

    These defaults are the one place the paper's per-clip settings (Tab. 5 frames, stride, input
    sizes and augmentation; Tab. 6 test views) are written in code; the shipped recipes in
    ``avf_train/configs`` name the source of each value. Fine-tuning augmentation
    (``rand_augment`` to ``random_erase``) is ignored in pre-training and at test time.
    """

    num_frames: int = 16
    sampling_rate: int = 4  # frame stride: 16 x 4 = 64 source frames (2.56 s at 25 fps)
    image_size: int = 160
    audio_frames: int = 256
    crop_scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)  # MultiScaleCrop (pre-training)
    audio_gain_aug: bool = True  # AudioMAE "roll+mag": effectively a gain of Beta(10,10)+0.5
    rand_augment: str = "rand-m7-n4-mstd0.5-inc1"  # official timm spec (magnitude 7, 4 ops); "" disables
    random_resized_crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    random_erase: float = 0.25
    # test-time views (Tab. 6): segments along time x crops along the long side
    test_segments: int = 2
    test_crops: int = 2


@dataclass
class DataArgs:
    """Where clips come from and how they are turned into model inputs (the official loaders' settings)."""

    shards: str = ""  # glob, folder or single .tar; comma-separated for several
    val_shards: str = ""  # optional held-out shards for evaluation/predict after training
    mel_bins: int = 128  # checked against the model's input spec; the fbank always has 128 bins
    clip: ClipArgs = field(default_factory=ClipArgs)  # frames, sizes, augmentation, test views
    # each clip yields this many differently-augmented copies in the same batch (Table 6; official
    # --num_sample): a batch of run.batch_size clips holds batch_size x repeated_aug views
    repeated_aug: int = 2
    # label handling (labelled stages)
    # what the classifier's outputs mean, in index order (avf_train/labels.py): "" = the map the
    # shards carry; "cea13" / "mer3" = paper Table 3 hybrids, or any protocol name, or a YAML file.
    # Resolved once before training into the full map (a mapping), which checkpoints carry and a
    # resumed run checks its shards against.
    label_map: str | dict[str, Any] = ""
    # streaming
    shuffle_buffer: int = 256
    num_workers: int = 4
    epoch_size: int = 0  # clips per nominal epoch; 0 = count the samples in the shards


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
    # DDP's find_unused_parameters, for a model whose forward skips parameters. Not needed for the
    # avf-models networks: the last LGI block's stage-IV attention gets zero gradients, not none
    find_unused_parameters: bool = False
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


# The shipped recipe each stage starts from: its values (Tab. 5 for pre-training, Tab. 6 "Post" and
# "Targeted" for the labelled stages), each with its source, are written only there.
STAGE_RECIPES: dict[str, str] = {
    "pretrain": "pretrain_base",
    "postpretrain": "postpretrain_cea",
    "finetune": "finetune_cea",
}


def stage_defaults(stage: Stage) -> TrainConfig:
    """The paper's Base settings for ``stage``: the dataclass defaults under the stage's recipe."""
    recipe = read_yaml(SHIPPED / f"{STAGE_RECIPES[stage]}.yaml")
    recipe.pop("stage", None)
    return update(TrainConfig(stage=stage), recipe)


# --------------------------------------------------------------------------- reading and writing


def from_dict(values: dict[str, Any], stage: str | None = None) -> TrainConfig:
    """A config from a (possibly partial) nested dict, on top of its stage's defaults.

    The stage is ``stage`` when given (the sub-command), else the dict's own ``stage``, else
    pre-training; a dict that names another stage than ``stage`` is refused.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {values!r}")
    named = values.get("stage")
    if stage is not None and named is not None and named != stage:
        raise ConfigError(f"the config is for stage {named!r}, not {stage!r}")
    chosen = stage or named or "pretrain"
    if chosen not in STAGES:
        raise ConfigError(f"config key 'stage' must be one of {', '.join(STAGES)}, got {chosen!r}")
    cfg = update(stage_defaults(chosen), {k: v for k, v in values.items() if k != "stage"})
    cfg.stage = chosen
    return cfg


def load_yaml(path: str | Path, stage: str | None = None) -> TrainConfig:
    """A YAML config file (``--config`` or ``RUN/config.yaml``) on top of its stage's defaults."""
    return from_dict(read_yaml(path), stage)


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)


def config_path(name: str) -> Path:
    """A YAML path, or the name of a shipped config (``avf_train/configs/<name>.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
    raise ConfigError(f"--config {name!r} is neither a file nor a shipped config ({known})")


def resolve(
    stage: str,
    *,
    config: str | None = None,
    resume_dir: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> TrainConfig:
    """One run's config: stage defaults <- ``RUN/config.yaml`` (resume) <- ``--config`` <- the
    per-field flags (dotted keys, ``None`` = not given) <- ``--set a.b=v`` (later wins).

    Everything is merged as nested dicts first and converted once (avf_data.settings), so every
    wrong key or value is one :class:`ConfigError` naming it.
    """
    values: dict[str, Any] = {}
    saved = Path(resume_dir) / "config.yaml" if resume_dir else None
    if saved is not None and saved.is_file():
        values = merge(values, read_yaml(saved))
    if config:
        given = read_yaml(config_path(config))
        named = given.get("stage")
        if named is not None and named != stage:
            raise ConfigError(f"--config {config} is for stage {named!r}, not {stage!r}")
        values = merge(values, given)
    values.pop("stage", None)
    for dotted, value in (flags or {}).items():
        if value is not None:
            values = merge(values, parse_dotted(dotted, value))
    for assignment in sets:
        values = merge(values, parse_override(assignment))
    cfg = from_dict(values, stage)
    validate(cfg)
    return cfg


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")


def parse_override(assignment: str) -> dict[str, Any]:
    """``--set a.b=v`` as a nested dict (``avf_data.settings.parse_set``), reading ``1e-4`` as a number.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-4``) and ``1e-4`` is text; learning
    rates are written ``1e-4`` on command lines, so such values are read as YAML 1.2 reads them.
    """

    def numbers(value: Any) -> Any:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, dict):
            return {k: numbers(v) for k, v in value.items()}
        if isinstance(value, list):
            return [numbers(v) for v in value]
        return value

    return numbers(parse_set(assignment))


def parse_dotted(dotted: str, value: Any) -> dict[str, Any]:
    """``("a.b", v)`` -> ``{"a": {"b": v}}``."""
    *parents, leaf = dotted.split(".")
    nested: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        nested = {part: nested}
    return nested


def validate(cfg: TrainConfig) -> None:
    """Combinations that no single field's type rules out."""
    if cfg.stage == "postpretrain" and cfg.finetune.task == "dea":
        raise ConfigError(
            "post-pre-training has labelled hybrids for cea and mer only, not dea (paper §4.2): "
            "fine-tune a DEA head from a pre-trained or post-pre-trained checkpoint instead"
        )


def task_label_map(task: str) -> str:
    """The post-pre-training label map of a task: the paper's Table 3 hybrids."""
    return {"cea": "cea13", "mer": "mer3"}.get(task, "")


def resolve_model_name(name: str) -> str:
    """Accept the CLI's size aliases (tiny/base/large/huge) as well as full registry names."""
    if not name:
        return "avfmae_pp_base"
    return f"avfmae_pp_{name}" if name in MODEL_SIZES else name


def transform_config(cfg: TrainConfig, mode: str) -> ClipTransformConfig:
    """The loader's per-clip settings (``data.clip``) for ``mode``: pretrain, finetune or test."""
    from .transforms import ClipTransformConfig

    return ClipTransformConfig.for_mode(cfg.data.clip, mode)
