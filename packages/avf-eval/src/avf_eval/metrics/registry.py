"""Metric names used by protocols, mapped to functions, so a protocol can list them as data.

Classification metrics score one pair of label vectors. Regression metrics are per
dimension: a protocol that lists ``pcc`` with dimensions ``(arousal, valence)`` is scored as
``pcc_arousal``, ``pcc_valence`` and their average ``pcc_mean``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from .classification import macro_f1, uar, wa_f1, war
from .micro import uf1
from .regression import ccc, pcc


@dataclass(frozen=True)
class MetricSpec:
    """A named metric: how to compute it and how to title it in a table."""

    name: str
    title: str
    kind: Literal["classification", "regression"]
    fn: Callable[..., float]


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("uar", "UAR", "classification", uar),
        MetricSpec("war", "WAR", "classification", war),
        MetricSpec("wa_f1", "WA-F1", "classification", wa_f1),
        MetricSpec("macro_f1", "Macro-F1", "classification", macro_f1),
        MetricSpec("uf1", "UF1", "classification", uf1),
        MetricSpec("pcc", "PCC", "regression", pcc),
        MetricSpec("ccc", "CCC", "regression", ccc),
    )
}


def metric_keys(names: Sequence[str], dimensions: Sequence[str] = ()) -> list[str]:
    """Expand protocol metric names into the result keys they produce, in table order."""
    keys: list[str] = []
    for name in names:
        spec = METRICS[name]
        if spec.kind == "regression":
            keys += [f"{name}_{dim}" for dim in dimensions] + [f"{name}_mean"]
        else:
            keys.append(name)
    return keys


def metric_title(key: str) -> str:
    """Human title of a result key, e.g. ``pcc_arousal`` -> ``PCC arousal``."""
    if key in METRICS:
        return METRICS[key].title
    base, _, dim = key.partition("_")
    return f"{METRICS[base].title} {dim}" if base in METRICS else key


def compute_metric(
    names: Sequence[str],
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    num_classes: int | None = None,
    dimensions: Sequence[str] = (),
) -> dict[str, float]:
    """Score one set of predictions with every listed metric; keys as :func:`metric_keys`."""
    scores: dict[str, float] = {}
    for name in names:
        if name not in METRICS:
            raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
        spec = METRICS[name]
        if spec.kind == "classification":
            scores[name] = spec.fn(y_true, y_pred, num_classes)
            continue
        true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
        pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
        if true.shape[1] != len(dimensions):
            raise ValueError(f"labels have {true.shape[1]} dimensions, protocol names {len(dimensions)}")
        per_dim = [spec.fn(true[:, d], pred[:, d]) for d in range(true.shape[1])]
        scores.update({f"{name}_{dim}": value for dim, value in zip(dimensions, per_dim, strict=False)})
        scores[f"{name}_mean"] = float(np.mean(per_dim)) if per_dim else 0.0
    return scores
