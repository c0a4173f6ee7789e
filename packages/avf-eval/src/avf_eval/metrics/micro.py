"""Micro-expression scores: UF1 and UAR as defined by the MEGC 2019 composite protocol.

MEGC computes both on predictions **pooled** over all leave-one-subject-out folds, because a
single subject often has only a handful of clips and per-fold F1 would be dominated by 0/0
cases. Pooling is done by the aggregation layer; these functions only score one pool.

UF1 is ``mean_c 2TP_c / (2TP_c + FP_c + FN_c)`` over classes that occur in the truth or the
predictions, which equals macro-F1 with ``zero_division=0``; UAR is the usual unweighted
average recall (:func:`avf_eval.metrics.classification.uar`).
"""

from __future__ import annotations

from numpy.typing import ArrayLike

from .classification import macro_f1


def uf1(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None = None) -> float:
    """Unweighted F1 of a pooled set of micro-expression predictions."""
    return macro_f1(y_true, y_pred, num_classes)
