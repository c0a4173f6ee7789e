"""Emotion-recognition metrics with defined behaviour on degenerate inputs.

Every metric here returns a finite float in a documented range instead of NaN, because a
benchmark table that silently shows ``nan`` for one fold poisons the mean across folds.
The conventions for undefined cases are spelled out in each function's docstring and in
the package README; tests pin them against scikit-learn / scipy.

Classification scores are fractions in [0, 1]; the CLI multiplies by 100 to match the
paper's tables.
"""

from .classification import (
    confusion_matrix,
    macro_f1,
    per_class_recall,
    uar,
    wa_f1,
    war,
)
from .micro import uf1
from .registry import METRICS, MetricSpec, compute_metric
from .regression import ccc, pcc, pcc_per_dimension

__all__ = [
    "METRICS",
    "MetricSpec",
    "ccc",
    "compute_metric",
    "confusion_matrix",
    "macro_f1",
    "pcc",
    "pcc_per_dimension",
    "per_class_recall",
    "uar",
    "uf1",
    "wa_f1",
    "war",
]
