"""Metrics against scikit-learn / scipy on random cases and the documented edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from avf_eval.metrics import (
    ccc,
    confusion_matrix,
    macro_f1,
    pcc,
    pcc_per_dimension,
    per_class_recall,
    uar,
    uf1,
    wa_f1,
    war,
)
from avf_eval.metrics.registry import compute_metric

SEEDS = range(20)


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 12))
    n = int(rng.integers(1, 200))
    return rng.integers(0, classes, n), rng.integers(0, classes, n), classes


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_sklearn(seed: int) -> None:
    y_true, y_pred, classes = _random_case(seed)
    assert war(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when a predicted class is absent from the truth
        expected_uar = skm.balanced_accuracy_score(y_true, y_pred)
    assert uar(y_true, y_pred, classes) == pytest.approx(expected_uar)
    assert wa_f1(y_true, y_pred, classes) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="weighted", zero_division=0)
    )
    assert macro_f1(y_true, y_pred, classes) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    assert uf1(y_true, y_pred, classes) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, classes), skm.confusion_matrix(y_true, y_pred, labels=list(range(classes)))
    )


def test_class_never_predicted() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 1])  # class 2 is never predicted
    assert uar(y_true, y_pred, 3) == pytest.approx(2 / 3)
    assert wa_f1(y_true, y_pred, 3) == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted", zero_division=0))
    assert macro_f1(y_true, y_pred, 3) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def test_class_absent_from_truth_is_excluded_from_uar() -> None:
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])  # class 2 predicted but never true
    # recall of classes 0 and 1 only: (0.5 + 1) / 2
    assert uar(y_true, y_pred, 3) == pytest.approx(0.75)
    assert uar(y_true, y_pred, 3) == pytest.approx(skm.recall_score(y_true, y_pred, labels=[0, 1], average="macro"))
    assert macro_f1(y_true, y_pred, 3) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    # a class neither true nor predicted does not change macro-F1
    assert macro_f1(y_true, y_pred, 10) == pytest.approx(macro_f1(y_true, y_pred, 3))


def test_empty_and_invalid_inputs() -> None:
    assert uar([], [], 3) == 0.0 and war([], []) == 0.0 and wa_f1([], [], 3) == 0.0 and macro_f1([], [], 3) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        war([0, 1], [0])
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix([0, 5], [0, 1], 3)
    with pytest.raises(ValueError, match="negative"):
        war([0, -1], [0, 1])


@pytest.mark.parametrize("seed", SEEDS)
def test_pcc_and_ccc_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(scale=rng.uniform(0.1, 2), size=50) + rng.normal()
    assert pcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)
    r = stats.pearsonr(x, y).statistic
    sx, sy = x.std(), y.std()
    expected_ccc = 2 * r * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)
    assert ccc(x, y) == pytest.approx(expected_ccc)


def test_correlation_edge_cases() -> None:
    truth = np.array([0.1, 0.5, 0.9, 0.3])
    constant = np.full(4, 0.4)
    assert pcc(truth, constant) == 0.0  # constant prediction: defined as 0, not NaN
    assert pcc(constant, truth) == 0.0
    assert pcc([1.0], [2.0]) == 0.0
    assert ccc(truth, constant) == pytest.approx(0.0)
    assert ccc(constant, constant) == 1.0
    assert ccc(truth, truth) == pytest.approx(1.0)
    assert pcc(truth, -truth) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="NaN"):
        pcc([0.0, np.nan], [1.0, 2.0])


def test_ccc_has_no_scale_tolerance() -> None:
    """A truth of scale 1e-6 against a constant-zero prediction is no agreement (CCC 0), not 1."""
    rng = np.random.default_rng(0)
    tiny = rng.normal(size=50) * 1e-6
    assert ccc(tiny, np.zeros(50)) == 0.0
    assert ccc(tiny, tiny) == pytest.approx(1.0)
    noisy = tiny + rng.normal(size=50) * 1e-7
    expected = 2 * np.cov(tiny, noisy, ddof=0)[0, 1] / (tiny.var() + noisy.var() + (tiny.mean() - noisy.mean()) ** 2)
    assert ccc(tiny, noisy) == pytest.approx(expected)
    assert ccc(tiny, noisy) <= stats.pearsonr(tiny, noisy)[0] + 1e-12  # CCC never exceeds PCC
    assert ccc(np.full(3, 0.5), np.full(3, 0.5)) == 1.0
    assert ccc(np.full(3, 0.5), np.full(3, 0.5 + 1e-9)) == 0.0  # two different constants


def test_pcc_per_dimension_and_registry() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(40, 3))
    pred = truth + rng.normal(scale=0.5, size=(40, 3))
    pred[:, 2] = 1.0  # collapsed dimension
    per_dim = pcc_per_dimension(truth, pred)
    for d in range(2):
        assert per_dim[d] == pytest.approx(stats.pearsonr(truth[:, d], pred[:, d]).statistic)
    assert per_dim[2] == 0.0
    scores = compute_metric(["pcc"], truth, pred, dimensions=("arousal", "valence", "dominance"))
    assert scores["pcc_mean"] == pytest.approx(per_dim.mean())
    assert set(scores) == {"pcc_arousal", "pcc_valence", "pcc_dominance", "pcc_mean"}


def test_uar_with_a_class_absent_from_the_truth() -> None:
    """UAR averages recall over the classes that occur in the truth, as sklearn's
    balanced_accuracy_score and the emotion literature do: a class with no true clip has no recall
    (0/0), so it is left out, neither counted as 0 nor as 1, however often it is predicted."""
    # 4 classes; class 2 never occurs in the truth but is predicted twice (wrongly, of course)
    y_true = np.array([0, 0, 0, 0, 1, 1, 3, 3, 3])
    y_pred = np.array([0, 0, 2, 1, 1, 2, 3, 3, 0])
    recalls = {0: 2 / 4, 1: 1 / 2, 3: 2 / 3}  # by hand: hits / true clips of each present class
    expected = sum(recalls.values()) / 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns: y_pred contains classes not in y_true
        assert skm.balanced_accuracy_score(y_true, y_pred) == pytest.approx(expected)
    assert skm.recall_score(y_true, y_pred, labels=[0, 1, 3], average="macro") == pytest.approx(expected)
    assert uar(y_true, y_pred, 4) == pytest.approx(expected)
    # the two wrong conventions give other numbers: the absent class as recall 0 (averaged over all
    # 4 classes) or as recall 1 (nothing of it was missed)
    assert uar(y_true, y_pred, 4) != pytest.approx(sum(recalls.values()) / 4)
    assert uar(y_true, y_pred, 4) != pytest.approx((sum(recalls.values()) + 1) / 4)
    # its recall is NaN (reports print a dash), its predictions still cost the classes they were taken from
    matrix = confusion_matrix(y_true, y_pred, 4)
    assert matrix[2].sum() == 0 and matrix[:, 2].tolist() == [1, 1, 0, 0]
    assert np.isnan(per_class_recall(matrix)[2])
    # the size of the label map does not change UAR: classes nobody has add nothing
    assert uar(y_true, y_pred) == uar(y_true, y_pred, 4) == uar(y_true, y_pred, 11)
    # and WAR (accuracy) is unaffected by the convention
    assert war(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))


def test_uar_when_every_prediction_is_a_class_absent_from_the_truth() -> None:
    y_true = np.array([0, 1, 1])
    y_pred = np.array([2, 2, 2])
    assert uar(y_true, y_pred, 3) == 0.0  # recall 0 for both present classes; the absent one is not averaged in
    assert uar([1, 1], [1, 1], 3) == 1.0  # one present class, perfectly recalled: classes 0 and 2 do not dilute it
