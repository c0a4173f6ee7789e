"""From prediction rows to per-fold and summary scores, the way the paper's protocols count.

Three steps, each a separate function so tests and the report can use them alone:

1. **Model selection** (:func:`select_epochs`): per fold, keep the rows of one epoch. The
   default is the last epoch, the only choice that does not look at test labels. The
   official HiCMAE/AVF-MAE++ code keeps the epoch with the best test score; that is offered
   as ``legacy-best-epoch-on-test`` for reproducing published numbers and is labelled as
   optimistic wherever it is used.
2. **View merge** (:func:`merge_views`): the views (temporal segments x spatial crops) of a
   video are combined into one prediction: softmax per view, mean over views, argmax for
   classification; plain mean of the raw outputs for regression.
3. **Fold aggregation** (:func:`score_protocol`): metrics per fold then mean over folds,
   or only the final fold, or one score over the pooled folds, as the protocol says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from .metrics.classification import confusion_matrix
from .metrics.registry import compute_metric, metric_keys
from .prediction_reader import PredictionFormatError, PredictionTable
from .protocols.types import Protocol

EpochSelection = Literal["last", "legacy-best-epoch-on-test"]


@dataclass(frozen=True)
class VideoPredictions:
    """One fold's merged predictions: one row per video."""

    fold: str
    videos: NDArray[np.str_]
    labels: NDArray[np.int64] | NDArray[np.float64]
    scores: NDArray[np.float64]  # class probabilities, or regression outputs
    num_views: NDArray[np.int64]

    @property
    def predicted(self) -> NDArray[np.int64]:
        """Arg-max class per video (classification only)."""
        return self.scores.argmax(axis=1)


@dataclass(frozen=True)
class FoldScore:
    """Metrics of one fold and how they were obtained."""

    fold: str
    epoch: int | None
    num_videos: int
    metrics: dict[str, float]
    confusion: NDArray[np.int64] | None = None


@dataclass(frozen=True)
class ScoreResult:
    """Everything `score` and `report` print: per-fold rows, the reported summary, caveats."""

    protocol: Protocol
    folds: tuple[FoldScore, ...]
    summary: dict[str, float]
    spread: dict[str, float]
    aggregation: str
    selection: EpochSelection
    pooled_confusion: NDArray[np.int64] | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def fold_sort_key(fold: str) -> tuple[int, float, str]:
    """Numeric folds in numeric order (2 before 10), then the rest alphabetically."""
    match = re.fullmatch(r"\D*?(\d+)", fold)
    return (0, float(match.group(1)), fold) if match else (1, 0.0, fold)


def softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def merge_views(table: PredictionTable, kind: str) -> list[VideoPredictions]:
    """Average the views of each video, per fold; the table must hold one epoch per fold."""
    outputs = table.outputs
    if kind == "classification":
        outputs = outputs.copy()
        logit_rows = table.is_logits
        if logit_rows.any():
            outputs[logit_rows] = softmax(outputs[logit_rows])
    frame = pd.DataFrame({"fold": table.folds, "video": table.videos, "view": table.views, "epoch": table.epochs})
    duplicated = frame.duplicated(["fold", "video", "view", "epoch"])
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise PredictionFormatError(
            f"{table.sources[row]}: view {table.views[row]} of video {table.videos[row]!r} "
            f"appears twice in fold {table.folds[row]}"
        )
    merged: list[VideoPredictions] = []
    for fold in sorted(set(table.folds.tolist()), key=fold_sort_key):
        rows = np.flatnonzero(table.folds == fold)
        videos, first, group = np.unique(table.videos[rows], return_index=True, return_inverse=True)
        counts = np.bincount(group, minlength=videos.size)
        sums = np.zeros((videos.size, outputs.shape[1]))
        np.add.at(sums, group, outputs[rows])
        labels = table.labels[rows]
        video_labels = labels[first]
        disagree = np.flatnonzero(np.any((labels != video_labels[group]).reshape(rows.size, -1), axis=1))
        if disagree.size:
            row = rows[disagree[0]]
            raise PredictionFormatError(
                f"{table.sources[row]}: label differs from another view of video {table.videos[row]!r}"
            )
        merged.append(VideoPredictions(fold, videos, video_labels, sums / counts[:, None], counts))
    return merged


def _score(protocol: Protocol, merged: VideoPredictions) -> dict[str, float]:
    predicted = merged.predicted if protocol.kind == "classification" else merged.scores
    return compute_metric(
        protocol.metrics,
        merged.labels,
        predicted,
        num_classes=protocol.num_classes or None,
        dimensions=protocol.dimensions,
    )


def select_epochs(
    table: PredictionTable, protocol: Protocol, selection: EpochSelection = "last"
) -> tuple[PredictionTable, dict[str, int | None]]:
    """Keep one epoch per fold; returns the filtered table and the epoch chosen per fold."""
    keep = np.zeros(len(table), dtype=bool)
    chosen: dict[str, int | None] = {}
    for fold in sorted(set(table.folds.tolist()), key=fold_sort_key):
        in_fold = table.folds == fold
        epochs = np.unique(table.epochs[in_fold])
        if epochs.size > 1 and (epochs < 0).any():
            row = int(np.flatnonzero(in_fold & (table.epochs < 0))[0])
            raise PredictionFormatError(
                f"{table.sources[row]}: row without 'epoch' in fold {fold} where other rows have one"
            )
        if epochs.size == 1:
            best = int(epochs[0])
        elif selection == "last":
            best = int(epochs.max())
        elif selection == "legacy-best-epoch-on-test":
            best = _best_epoch_on_test(table, protocol, in_fold, epochs)
        else:
            raise ValueError(f"unknown epoch selection {selection!r}")
        chosen[fold] = best if best >= 0 else None
        keep |= in_fold & (table.epochs == best)
    return table.take(keep), chosen


def _best_epoch_on_test(
    table: PredictionTable, protocol: Protocol, in_fold: NDArray[np.bool_], epochs: NDArray[np.int64]
) -> int:
    """The official code's choice: the epoch whose *test* score is highest (earliest on ties)."""
    best_epoch, best_value = int(epochs[0]), -np.inf
    for epoch in epochs:
        (merged,) = merge_views(table.take(in_fold & (table.epochs == epoch)), protocol.kind)
        value = _score(protocol, merged)[protocol.primary_metric]
        if value > best_value:
            best_epoch, best_value = int(epoch), value
    return best_epoch


def _pool(merged: list[VideoPredictions]) -> VideoPredictions:
    return VideoPredictions(
        fold="pooled",
        videos=np.concatenate([m.videos for m in merged]),
        labels=np.concatenate([m.labels for m in merged]),
        scores=np.concatenate([m.scores for m in merged]),
        num_views=np.concatenate([m.num_views for m in merged]),
    )


def _confusion(protocol: Protocol, merged: VideoPredictions) -> NDArray[np.int64] | None:
    if protocol.kind != "classification":
        return None
    return confusion_matrix(merged.labels, merged.predicted, protocol.num_classes)


def _fold_warnings(protocol: Protocol, folds: list[str]) -> list[str]:
    expected = protocol.folds.count
    if protocol.folds.scheme == "loso" or expected is None or len(folds) == expected:
        return []
    return [f"protocol {protocol.name} has {expected} fold(s); predictions hold {len(folds)} ({', '.join(folds)})"]


def score_protocol(table: PredictionTable, protocol: Protocol, selection: EpochSelection = "last") -> ScoreResult:
    """Score predictions under a protocol: select epochs, merge views, aggregate folds."""
    selected, chosen = select_epochs(table, protocol, selection)
    merged = merge_views(selected, protocol.kind)
    folds = [
        FoldScore(m.fold, chosen[m.fold], int(m.videos.size), _score(protocol, m), _confusion(protocol, m))
        for m in merged
    ]
    keys = metric_keys(protocol.metrics, protocol.dimensions)
    warnings = _fold_warnings(protocol, [f.fold for f in folds])
    pooled = _pool(merged)
    if protocol.fold_aggregation == "pooled":
        summary = _score(protocol, pooled)
        spread = {key: 0.0 for key in keys}
        aggregation = f"one score over the pooled predictions of {len(folds)} fold(s)"
    elif protocol.fold_aggregation == "last":
        summary = dict(folds[-1].metrics)
        spread = {key: 0.0 for key in keys}
        aggregation = f"final fold only (fold {folds[-1].fold}), as the paper reports this protocol"
    else:
        values = {key: np.array([f.metrics[key] for f in folds]) for key in keys}
        summary = {key: float(v.mean()) for key, v in values.items()}
        spread = {key: float(v.std(ddof=0)) for key, v in values.items()}
        aggregation = f"mean over {len(folds)} fold(s)"
    if selection == "legacy-best-epoch-on-test":
        warnings.append("epochs were chosen on the test set (legacy option): scores are optimistic")
    return ScoreResult(
        protocol=protocol,
        folds=tuple(folds),
        summary=summary,
        spread=spread,
        aggregation=aggregation,
        selection=selection,
        pooled_confusion=_confusion(protocol, pooled),
        warnings=tuple(warnings),
    )
