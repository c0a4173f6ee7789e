"""Load and validate the protocol registry shipped as ``registry.yaml``."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from avf_data.labels import builtin_spaces

from ..metrics.registry import METRICS, metric_keys
from .types import PUBLISHED_MODELS, FoldScheme, Protocol


def _build(name: str, raw: dict[str, Any]) -> Protocol:
    folds = FoldScheme(**raw.pop("folds"))
    protocol = Protocol(
        name=name,
        folds=folds,
        labels=builtin_spaces().get(name),
        dimensions=tuple(raw.pop("dimensions", ())),
        metrics=tuple(raw.pop("metrics")),
        published_class_recall={
            model: tuple(values) for model, values in raw.pop("published_class_recall", {}).items()
        },
        **raw,
    )
    _validate(protocol)
    return protocol


def _validate(p: Protocol) -> None:
    """Fail at import time on an inconsistent entry rather than at scoring time."""
    where = f"registry.yaml: protocol {p.name}"
    if p.kind == "classification" and p.labels is None:
        raise ValueError(f"{where}: classification protocol without a label space in avf-data's label_spaces.yaml")
    if p.kind == "regression" and (not p.dimensions or p.labels is not None):
        raise ValueError(f"{where}: a regression protocol has dimensions and no label space")
    unknown = [m for m in p.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"{where}: unknown metrics {unknown}")
    keys = metric_keys(p.metrics, p.dimensions)
    if p.primary_metric not in keys:
        raise ValueError(f"{where}: primary metric {p.primary_metric!r} not among {keys}")
    if p.folds.scheme != "loso" and not p.folds.count:
        raise ValueError(f"{where}: fold scheme {p.folds.scheme} needs a fold count")
    if p.folds.scheme in ("subject", "session", "loso") and not p.folds.group_column:
        raise ValueError(f"{where}: fold scheme {p.folds.scheme} needs a group column")
    for model, numbers in p.published.items():
        if model not in PUBLISHED_MODELS:
            raise ValueError(f"{where}: unknown published model {model!r}")
        stray = set(numbers) - set(keys)
        if stray:
            raise ValueError(f"{where}: published metrics {sorted(stray)} are not scored")
    for model, recalls in p.published_class_recall.items():
        if len(recalls) != p.num_classes:
            raise ValueError(f"{where}: {model} class recalls do not match the class list")


@lru_cache(maxsize=1)
def load_registry() -> dict[str, Protocol]:
    """All protocols by name, in the paper's order."""
    text = resources.files("avf_eval.protocols").joinpath("registry.yaml").read_text("utf-8")
    raw: dict[str, dict[str, Any]] = yaml.safe_load(text)
    return {name: _build(name, dict(entry)) for name, entry in raw.items()}


def get_protocol(name: str) -> Protocol:
    """Look a protocol up by name (case-insensitive, ``_`` and ``-`` interchangeable)."""
    registry = load_registry()
    key = name.strip().lower().replace("_", "-")
    if key not in registry:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(registry)}")
    return registry[key]
