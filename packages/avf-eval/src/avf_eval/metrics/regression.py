"""Dimensional (arousal / valence / dominance) scores: Pearson and concordance correlation.

Both coefficients are undefined when an input has zero variance (a model that collapsed to a
constant output, or a fold whose labels are all equal). Instead of NaN we return:

* PCC = 0.0 when either side is constant: a constant carries no linear information about
  the other side, and 0 keeps the mean across folds and dimensions finite while still
  punishing a collapsed model.
* CCC = 1.0 only when both sides are exactly the same constant (perfect agreement) and 0.0
  when both are constants that differ. Otherwise the formula is used as it stands, whatever
  the scale: its denominator holds both variances and the squared mean difference, so it is
  positive as soon as either side varies, and a constant prediction of a varying truth gives
  0.0 (the covariance is 0). No tolerance is applied, because any fixed epsilon would call a
  truth of scale 1e-6 "constant" and grade a constant-zero prediction of it as perfect.

Moments are population moments (ddof=0), as in Lin (1989).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    true = np.asarray(y_true, dtype=np.float64).ravel()
    pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    if not (np.all(np.isfinite(true)) and np.all(np.isfinite(pred))):
        raise ValueError("regression inputs contain NaN or infinity")
    return true, pred


def pcc(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Pearson correlation; 0.0 if either side is constant or there are fewer than 2 points."""
    true, pred = _pair(y_true, y_pred)
    if true.size < 2:
        return 0.0
    if np.all(true == true[0]) or np.all(pred == pred[0]):
        return 0.0
    dt, dp = true - true.mean(), pred - pred.mean()
    scale = np.sqrt((dt * dt).sum() * (dp * dp).sum())
    return float(np.clip((dt * dp).sum() / scale, -1.0, 1.0))


def ccc(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Lin's concordance correlation coefficient; 1.0 only for exactly identical constants."""
    true, pred = _pair(y_true, y_pred)
    if true.size == 0:
        return 0.0
    if np.all(true == true[0]) and np.all(pred == pred[0]):
        return 1.0 if true[0] == pred[0] else 0.0
    mean_t, mean_p = true.mean(), pred.mean()
    covariance = ((true - mean_t) * (pred - mean_p)).mean()
    denominator = true.var() + pred.var() + (mean_t - mean_p) ** 2
    if denominator <= 0.0:  # variances that underflow (values near 1e-160): no measurable agreement
        return 0.0
    return float(np.clip(2.0 * covariance / denominator, -1.0, 1.0))


def pcc_per_dimension(y_true: ArrayLike, y_pred: ArrayLike) -> NDArray[np.float64]:
    """PCC of each column of ``(N, D)`` arrays; average it yourself for the mean PCC."""
    true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if true.ndim != 2 or true.shape != pred.shape:
        raise ValueError(f"expected two (N, D) arrays of equal shape, got {true.shape} and {pred.shape}")
    return np.array([pcc(true[:, d], pred[:, d]) for d in range(true.shape[1])])
