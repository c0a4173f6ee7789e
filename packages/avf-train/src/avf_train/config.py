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

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from avf_data.settings import ConfigError, merge, parse_set, read_yaml, to_dict, update
from avf_data.shard_urls import expand_braces, kind, split_list

__all__ = [
    "ClipArgs",
    "ConfigError",
    "DataArgs",
    "FinetuneArgs",
    "ModelArgs",
    "OptimArgs",
    "RunArgs",
    "SyncnetArgs",
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
]

Stage = Literal["pretrain", "postpretrain", "finetune", "syncnet"]
STAGES: tuple[str, ...] = ("pretrain", "postpretrain", "finetune", "syncnet")
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
    # shell commands as shards ("pipe:CMD") given by a config file (--config, RUN/config.yaml) are
    # refused unless this is set on the command line (--set data.allow_pipe=true), so a config
    # received from someone else cannot run code; pipe: specs given as --data / --val-data / --set
    # data.shards=... are the user's own and always accepted. avf-train records the consent in
    # RUN/config.yaml (true when the run's shards use pipe:), which is what a --resume honours.
    allow_pipe: bool = False
    # streaming
    shuffle_buffer: int = 256
    # loader worker processes per rank; "auto" = min(4, the CPUs this process may use / the
    # processes of this node), resolved once by ``resolve`` (``loader_workers``) into a number
    num_workers: int | Literal["auto"] = "auto"
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
    # load --init even when its encoder/fusion blocks differ from the model's (the extra blocks are
    # dropped, the missing ones start at random init); off, that is an error naming the blocks
    allow_partial_init: bool = False


@dataclass
class SyncnetArgs:
    """The sync expert (``avf-train syncnet``, :mod:`avf_train.sync_expert`): a SyncNet v2 network
    trained on one's own shards; its weights and calibration score corpora in avf-data."""

    # what SyncNet sees, as avf-data's scoring feeds it: "source" = the reference crop cut from the
    # source video by the clip's face boxes (needs the sources where the build found them), "crop" =
    # the shards' 160 px training crop (the sidecar then tells avf-data to score crops too)
    input: Literal["source", "crop"] = "source"
    face_crop_scale: float = 1.8  # input "crop": face-crop side / face-box side (avf-data's crop.margin)
    windows: int = 8  # consecutive 5-frame windows per clip visit (they share audio embeddings)
    max_shift: int = 15  # in-clip negatives: audio shifted by up to this many frames (avf-data searches ±15)
    min_shift: int = 2  # shifts of 1 frame are neither positive nor negative (codec delays, 80 % overlap)
    temperature: float = 1.0  # logits = -distance / temperature
    flip: bool = True  # mirror a clip visit's frames with probability 1/2
    # robustness to out-of-sync clips in a corpus not yet sync-filtered: after trim_after steps, the
    # trim share of each batch's clips with the highest loss is left out of the gradient
    trim: float = 0.0
    trim_after: int = 0
    calibration_clips: int = 64  # clips scored to calibrate the threshold (--val-data, else training shards)
    export: str = "syncnet_expert.model"  # weights file written into the run folder, beside its .json


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
    syncnet: SyncnetArgs = field(default_factory=SyncnetArgs)
    run: RunArgs = field(default_factory=RunArgs)


# The shipped recipe each stage starts from: its values (Tab. 5 for pre-training, Tab. 6 "Post" and
# "Targeted" for the labelled stages), each with its source, are written only there.
STAGE_RECIPES: dict[str, str] = {
    "pretrain": "pretrain_base",
    "postpretrain": "postpretrain_cea",
    "finetune": "finetune_cea",
    "syncnet": "syncnet",
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
    wrong key or value is one :class:`ConfigError` naming it. Each layer is kept apart until then,
    because who wrote a value matters for one field: ``pipe:`` shards run a shell command, which
    a config file may only do with the command line's consent (:func:`check_pipes`), and that is
    decided here, before anything reads a shard.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    saved = Path(resume_dir) / "config.yaml" if resume_dir else None
    if saved is not None and saved.is_file():
        layers.append((RUN_CONFIG, read_yaml(saved)))
    if config:
        given = read_yaml(config_path(config))
        named = given.get("stage")
        if named is not None and named != stage:
            raise ConfigError(f"--config {config} is for stage {named!r}, not {stage!r}")
        layers.append((f"--config {config}", given))
    values: dict[str, Any] = {}
    for _, layer in layers:
        values = merge(values, {k: v for k, v in layer.items() if k != "stage"})
    command_line: dict[str, Any] = {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            command_line = merge(command_line, parse_dotted(dotted, value))
    for assignment in sets:
        command_line = merge(command_line, parse_override(assignment))
    cfg = from_dict(merge(values, command_line), stage)
    validate(cfg)
    cfg.data.allow_pipe = check_pipes(cfg, [*layers, (COMMAND_LINE, command_line)])
    cfg.data.num_workers = loader_workers(cfg.data.num_workers)
    return cfg


RUN_CONFIG = "RUN/config.yaml"  # the layer names check_pipes tells apart
COMMAND_LINE = "the command line"
SHARD_KEYS = ("shards", "val_shards")


def uses_pipe(spec: str) -> bool:
    """Whether a shard spec names a ``pipe:`` command, in any part of it after brace expansion
    (exactly what :func:`avf_data.shard_urls.expand_urls` would hand to a shell)."""
    return any(kind(item) == "pipe" for part in split_list(spec) for item in expand_braces(part))


def check_pipes(cfg: TrainConfig, layers: list[tuple[str, dict[str, Any]]]) -> bool:
    """Refuse ``pipe:`` shards that a config file gave without the command line's consent.

    A shard spec ``pipe:CMD`` runs CMD in a shell, so a config file received from someone else
    would be code. The spec is accepted when the layer that set it is the command line (--data,
    --val-data, --set data.shards=...), or when the command line opts in with
    ``--set data.allow_pipe=true``; a ``RUN/config.yaml`` being resumed also counts when it
    records that opt-in (avf-train writes it there when the run started with pipe: shards, from
    the command line or with the opt-in). ``data.allow_pipe`` in a ``--config`` file does not
    count: a file cannot consent for itself. Returns the consent to record in the run's config.
    """
    data = {name: layer.get("data") if isinstance(layer.get("data"), dict) else {} for name, layer in layers}
    consent = data.get(COMMAND_LINE, {}).get("allow_pipe") is True
    accepted = False
    for key in SHARD_KEYS:
        spec = getattr(cfg.data, key)
        if not spec or not uses_pipe(spec):
            continue
        source = next((name for name, values in reversed(data.items()) if key in values), "the stage recipe")
        recorded = source == RUN_CONFIG and data[RUN_CONFIG].get("allow_pipe") is True
        if source != COMMAND_LINE and not consent and not recorded:
            flag = "--data" if key == "shards" else "--val-data"
            raise ConfigError(
                f"data.{key} {spec!r} from {source} runs a shell command (pipe:); a config file may run "
                f"commands only when you opt in on the command line with --set data.allow_pipe=true "
                f"(data.allow_pipe in the file does not count), or give the shards with {flag}"
            )
        accepted = True
    return consent or accepted


def loader_workers(value: int | str | None) -> int:
    """``data.num_workers`` as a number: ``"auto"`` is min(4, the CPUs this process may use divided
    by the training processes of this node, less one for the process itself), at least 1.

    Why not a fixed 4: on a 2-core machine four decoding workers and the trainer fight for two
    cores (the trainer's own step needs one: 2 cores get 1 worker, 16 get 4). The CPUs are the
    process's affinity (taskset, Slurm) capped by a cgroup quota (docker --cpus), and torchrun's
    ranks on one node share them (``LOCAL_WORLD_SIZE``).
    """
    if value is not None and value != "auto":  # None: not given, i.e. auto
        return int(value)
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        local = 1
    return max(1, min(4, available_cpus() // local - 1))


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


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
    if cfg.stage == "syncnet":
        check_syncnet(cfg)
    if cfg.stage == "postpretrain" and cfg.finetune.task == "dea":
        raise ConfigError(
            "post-pre-training has labelled hybrids for cea and mer only, not dea (paper §4.2): "
            "fine-tune a DEA head from a pre-trained or post-pre-trained checkpoint instead"
        )
    if isinstance(cfg.data.num_workers, int) and cfg.data.num_workers < 0:
        raise ConfigError(f"config key 'data.num_workers' must be 0 or more, or auto, got {cfg.data.num_workers}")


def check_syncnet(cfg: TrainConfig) -> None:
    """The sync expert trains SyncNet v2 only (its weights must load as syncnet_v2.model does)."""
    s = cfg.syncnet
    if cfg.model.name not in ("", "syncnet_v2"):
        raise ConfigError(f"avf-train syncnet trains the SyncNet v2 network only, not model {cfg.model.name!r}")
    cfg.model.name = "syncnet_v2"
    if s.windows < 1 or not 1 <= s.min_shift <= s.max_shift:
        raise ConfigError(
            f"syncnet needs windows >= 1 and 1 <= min_shift <= max_shift, got windows {s.windows}, "
            f"min_shift {s.min_shift}, max_shift {s.max_shift}"
        )
    if not 0.0 <= s.trim < 1.0 or s.temperature <= 0:
        raise ConfigError(f"syncnet.trim must be in [0, 1) and temperature > 0, got {s.trim}, {s.temperature}")


def task_label_map(task: str) -> str:
    """The post-pre-training label map of a task: the paper's Table 3 hybrids."""
    return {"cea": "cea13", "mer": "mer3"}.get(task, "")


def resolve_model_name(name: str) -> str:
    """Accept the CLI's size aliases (tiny/base/large/huge) as well as full registry names."""
    if not name:
        return "avfmae_pp_base"
    return f"avfmae_pp_{name}" if name in MODEL_SIZES else name
