"""Categorical metrics (UAR, WAR, WA-F1, macro-F1), all derived from one confusion matrix.

Computing everything from the confusion matrix keeps the definitions in one place and makes
the edge cases explicit:

* a class **absent from the truth** has no recall (0/0). UAR averages recall over the
  classes that occur in the truth only, which is what "unweighted average recall" means in
  the emotion literature and what ``sklearn.metrics.balanced_accuracy_score`` does.
* a class **never predicted** has no precision (0/0). Its precision is taken as 0, so its
  F1 is 0 (``zero_division=0`` in scikit-learn terms).
* macro-F1 averages over the classes that occur in the truth **or** the predictions (a
  class nobody mentions carries no information); this is scikit-learn's default label set.
* WA-F1 weights each class's F1 by its support in the truth, so absent classes weigh 0.
* empty inputs give 0.0 for every score.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _as_labels(values: ArrayLike, name: str) -> NDArray[np.int64]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class ids, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"{name} must hold integer class ids")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} holds a negative class id ({array.min()})")
    return array


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> NDArray[np.int64]:
    """Counts ``C[t, p]`` of clips with truth ``t`` predicted as ``p``.

    ``num_classes`` fixes the matrix size so classes missing from both inputs still get a
    row and column (reports need a stable layout); by default it is ``max id + 1``.
    """
    true = _as_labels(y_true, "y_true")
    pred = _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    seen = int(max(true.max(initial=-1), pred.max(initial=-1))) + 1
    size = seen if num_classes is None else num_classes
    if seen > size:
        raise ValueError(f"class id {seen - 1} out of range for num_classes={size}")
    matrix = np.zeros((size, size), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix


def per_class_recall(matrix: NDArray[np.integer]) -> NDArray[np.float64]:
    """Recall of every class; NaN marks a class absent from the truth (kept visible in reports)."""
    support = matrix.sum(axis=1).astype(np.float64)
    hits = np.diag(matrix).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(support > 0, hits / np.where(support > 0, support, 1), np.nan)


def _per_class_f1(matrix: NDArray[np.integer]) -> NDArray[np.float64]:
    hits = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)  # 2TP + FP + FN
    return np.where(denominator > 0, 2 * hits / np.where(denominator > 0, denominator, 1), 0.0)


def _matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None) -> NDArray[np.int64]:
    return confusion_matrix(y_true, y_pred, num_classes)


def uar(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Unweighted average recall: mean recall over classes present in the truth."""
    recalls = per_class_recall(_matrix(y_true, y_pred, num_classes))
    present = recalls[~np.isnan(recalls)]
    return float(present.mean()) if present.size else 0.0


def war(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Weighted average recall, i.e. plain accuracy."""
    matrix = _matrix(y_true, y_pred, num_classes)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def wa_f1(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """F1 per class weighted by truth support (scikit-learn ``average='weighted'``)."""
    matrix = _matrix(y_true, y_pred, num_classes)
    support = matrix.sum(axis=1).astype(np.float64)
    total = support.sum()
    return float((_per_class_f1(matrix) * support).sum() / total) if total else 0.0


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Mean F1 over classes that occur in the truth or the predictions."""
    matrix = _matrix(y_true, y_pred, num_classes)
    mentioned = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    return float(_per_class_f1(matrix)[mentioned].mean()) if mentioned.any() else 0.0
