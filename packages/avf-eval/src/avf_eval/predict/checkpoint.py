"""Rebuild a fine-tuned avf-models network from a checkpoint, with its class names.

Two layouts are read, both plain dicts loadable with ``torch.load(path, weights_only=True)``:

* **avf-train** (``RUN/checkpoint`` or ``RUN/checkpoints/step-*.pt``): ``stage``,
  ``model_name``, ``model`` (state dict) and ``config`` (the nested training config; we read
  ``model.modality``, ``model.overrides``, ``finetune.task``, ``finetune.num_classes``,
  ``data.label_map``, ``data.sampling_rate``, ``data.test_segments``, ``data.test_crops``).
* **minimal**: ``model_name``, ``model`` and optionally ``num_classes``, ``class_names``,
  ``task`` (``classification``/``regression``), ``dimensions``, ``model_overrides``.

Class names come from, in order: ``class_names`` in the file, the training label map
(``cea13`` / ``mer3`` via avf-train when installed), the ``--protocol`` given by the user, and
finally ``class_0 ...``, so the output always says which names are guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avf_eval.protocols.types import Protocol


class CheckpointError(ValueError):
    """The checkpoint cannot be turned into a prediction model; the message says why."""


@dataclass(frozen=True)
class ViewSpec:
    """How test views are cut from a clip (the paper's inference: 2 segments x 2 crops, Tab. 6)."""

    frames: int = 16
    stride: int = 4
    image_size: int = 160
    audio_frames: int = 256
    segments: int = 2
    crops: int = 2


@dataclass(frozen=True)
class LoadedModel:
    """A ready-to-run model and what its outputs mean."""

    model: nn.Module
    model_name: str
    task: str  # classification | regression
    modality: str  # av | video | audio
    names: tuple[str, ...]  # class names, or regression dimensions
    names_source: str  # where the names came from, shown to the user
    views: ViewSpec
    path: str


def resolve_path(path: str | Path) -> Path:
    """A checkpoint file, or an avf-train run folder (its ``checkpoint`` link)."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "checkpoint", *sorted((p / "checkpoints").glob("step-*.pt"), reverse=True)):
            if candidate.exists():
                return candidate.resolve()
        raise CheckpointError(f"{p}: run folder without a checkpoint (expected {p}/checkpoint)")
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    return p.resolve()


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name) or {}
    return value if isinstance(value, dict) else {}


def _num_outputs(ckpt: dict[str, Any], config: dict[str, Any], state: dict[str, torch.Tensor]) -> int:
    explicit = ckpt.get("num_classes") or _section(config, "finetune").get("num_classes") or 0
    if int(explicit) > 0:
        return int(explicit)
    head = state.get("head.weight")
    if head is None:
        raise CheckpointError("cannot tell the number of outputs: no num_classes and no head.weight in the state dict")
    return int(head.shape[0])


def _label_map_names(spec: str) -> tuple[str, ...] | None:
    if not spec:
        return None
    try:
        from avf_train.labels import get_label_map
    except ImportError:
        return None
    try:
        label_map = get_label_map(spec)
    except (FileNotFoundError, ValueError):
        return None
    return tuple(label_map.classes) if label_map is not None else None


def _names(ckpt: dict[str, Any], config: dict[str, Any], task: str, count: int, protocol: Protocol | None) -> tuple[tuple[str, ...], str]:
    if protocol is not None:
        if protocol.kind != task:
            raise CheckpointError(f"the checkpoint is a {task} model but protocol {protocol.name} is {protocol.kind}")
        if protocol.output_size != count:
            raise CheckpointError(f"the model has {count} outputs but protocol {protocol.name} names {protocol.output_size}")
    stored = ckpt.get("dimensions") if task == "regression" else ckpt.get("class_names")
    candidates: list[tuple[Any, str]] = [(stored, "checkpoint")]
    candidates.append((_label_map_names(str(_section(config, "data").get("label_map") or "")), "training label map"))
    if protocol is not None:
        candidates.append((protocol.dimensions if task == "regression" else protocol.classes, f"protocol {protocol.name}"))
    for names, source in candidates:
        if names and len(names) == count:
            return tuple(str(n) for n in names), source
    prefix = "dim" if task == "regression" else "class"
    return tuple(f"{prefix}_{i}" for i in range(count)), "unnamed (pass --protocol to name them)"


def load_model(path: str | Path, device: str | torch.device = "cpu", protocol: Protocol | None = None) -> LoadedModel:
    """Load weights and rebuild the network with ``avf_models.create_model``."""
    from avf_models import create_model

    file = resolve_path(path)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise CheckpointError(f"{file}: not a weights-only torch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{file}: expected a dict with 'model' (state dict) and 'model_name'; got a bare state dict")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if ckpt.get("stage", "finetune") not in ("finetune", "postpretrain"):
        raise CheckpointError(f"{file}: a {ckpt.get('stage')!r} checkpoint has no classifier head; use a fine-tuned one")
    name = ckpt.get("model_name") or _section(config, "model").get("name")
    if not name:
        raise CheckpointError(f"{file}: no 'model_name' in the checkpoint")
    state: dict[str, torch.Tensor] = ckpt["model"]
    model_args = _section(config, "model")
    finetune = _section(config, "finetune")
    task = ckpt.get("task") or ("regression" if finetune.get("task") == "dea" else "classification")
    overrides: dict[str, Any] = dict(model_args.get("overrides") or {})
    overrides.update(ckpt.get("model_overrides") or {})
    modality = str(overrides.pop("modality", None) or model_args.get("modality") or "av")
    if modality != "av":
        overrides["modality"] = modality
    if task == "regression":
        overrides.setdefault("task", "regression")
    count = _num_outputs(ckpt, config, state)
    model = create_model(str(name), stage="finetune", num_classes=count, drop_path_rate=0.0, **overrides)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{file}: weights do not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    spec = getattr(model, "input_spec", None)
    data = _section(config, "data")
    views = ViewSpec(
        frames=spec.frames if spec else 16,
        stride=int(data.get("sampling_rate", 4)),
        image_size=spec.image_size if spec else 160,
        audio_frames=spec.audio_frames if spec else 256,
        segments=int(data.get("test_segments", 2)),
        crops=int(data.get("test_crops", 2)),
    )
    names, source = _names(ckpt, config, task, count, protocol)
    return LoadedModel(model.to(device).eval(), str(name), task, modality, names, source, views, str(file))
