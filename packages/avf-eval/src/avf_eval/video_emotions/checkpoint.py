"""Load a fine-tuned checkpoint for prediction and name its outputs.

Loading is avf-train's own, in one call (``avf_train.modeling.load_predictor``, the same one
``avf-train predict`` uses): it resolves a run folder (``RUN/checkpoint``), refuses pre-training
checkpoints and bare state dicts, rebuilds the network from the stored training config, loads
the weights and checks the data settings against the model's input shapes. It also reads the
exported layout without a config (``model_name``, ``model`` and optionally ``num_classes``,
``task``, ``modality``, ``model_overrides``). The test views come from the same config.

What is avf-eval's own is the naming of the outputs, in this order: the names the checkpoint
carries (``class_names``, its training config's classes, or ``dimensions`` for regression), the
training label map (``cea13`` / ``mer3`` / a YAML file), the ``--protocol`` given by the user, and
finally ``class_0 ...``, so the output always says which names are guesses.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..protocols.types import Protocol


class CheckpointError(ValueError):
    """The checkpoint cannot be turned into a prediction model; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    """A ready-to-run model and what its outputs mean."""

    predictor: Any  # avf_train.modeling.Predictor: the model, its training config and test views
    task: str  # classification | regression
    names: tuple[str, ...]  # class names, or regression dimensions
    names_source: str  # where the names came from, shown to the user

    @property
    def model(self) -> nn.Module:
        return self.predictor.model

    @property
    def model_name(self) -> str:
        return self.predictor.model_name

    @property
    def config(self) -> Any:
        """avf_train.config.TrainConfig the model was trained with."""
        return self.predictor.config

    @property
    def views(self) -> Any:
        """avf_train.transforms.ClipTransformConfig in test mode (segments x crops)."""
        return self.predictor.views

    @property
    def path(self) -> str:
        return self.predictor.path


def _names(predictor: Any, task: str, protocol: Protocol | None) -> tuple[tuple[str, ...], str]:
    count = predictor.num_outputs
    if protocol is not None:
        if protocol.kind != task:
            raise CheckpointError(f"the checkpoint is a {task} model but protocol {protocol.name} is {protocol.kind}")
        if protocol.output_size != count:
            raise CheckpointError(
                f"the model has {count} outputs but protocol {protocol.name} names {protocol.output_size}"
            )
    candidates: list[tuple[Any, str]] = [predictor.names()]
    if protocol is not None:
        candidates.append(
            (protocol.dimensions if task == "regression" else protocol.classes, f"protocol {protocol.name}")
        )
    for names, source in candidates:
        if names and len(names) == count:
            return tuple(str(n) for n in names), source
    prefix = "dim" if task == "regression" else "class"
    return tuple(f"{prefix}_{i}" for i in range(count)), "unnamed (pass --protocol to name them)"


class DeviceError(ValueError):
    """The requested torch device does not exist on this machine (the checkpoint is not at fault)."""


def check_device(device: str | torch.device) -> torch.device:
    """Parse ``--device`` and make sure this machine has it, before any checkpoint is read.

    Without this, ``--device cuda`` on a machine without CUDA fails inside ``torch.load`` or
    ``.to()`` and the message reads as if the checkpoint were broken. ``auto`` (avf-train's
    default too) is the first CUDA device when there is one, else the CPU.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"--device {device!r} is not a torch device ({error}); use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = (
                "built without CUDA"
                if torch.version.cuda is None
                else f"CUDA {torch.version.cuda} build, no usable GPU"
            )
            raise DeviceError(
                f"--device {device}: this machine has no CUDA device (torch {torch.__version__}, {build}); "
                "use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return dev


def load_model(path: str | Path, device: str | torch.device = "auto", protocol: Protocol | None = None) -> LoadedModel:
    """Load a checkpoint file or avf-train run folder with avf-train and name its outputs."""
    from avf_train.modeling import load_predictor

    device = check_device(device)
    try:
        predictor = load_predictor(path, device)
    except (ValueError, FileNotFoundError) as error:  # StageError and ConfigError are ValueErrors
        raise CheckpointError(str(error)) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:  # torch.load of a non-weights-only file
        raise CheckpointError(
            f"{path}: not a weights-only torch checkpoint ({type(error).__name__}: {error})"
        ) from None
    task = "regression" if predictor.regression else "classification"
    names, source = _names(predictor, task, protocol)
    return LoadedModel(predictor, task, names, source)
