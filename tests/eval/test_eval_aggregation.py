"""Predictions loading, view merge, epoch selection and fold aggregation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from avf_eval.aggregation import merge_views, score_protocol, select_epochs, softmax
from avf_eval.prediction_reader import PredictionFormatError, load_predictions
from avf_eval.protocols import get_protocol


def _logit(cls: int, n: int, strength: float = 3.0) -> list[float]:
    out = [0.0] * n
    out[cls] = strength
    return out


def test_softmax_average_argmax_per_video(jsonl_writer) -> None:
    protocol = get_protocol("iemocap")
    # view 0 is confident in class 1, views 1 and 2 mildly prefer class 2: softmax-average picks 1
    rows = [
        {"key": "a#0", "video": "a", "view": 0, "fold": 1, "label": 1, "logits": [0, 10, 0, 0]},
        {"key": "a#1", "video": "a", "view": 1, "fold": 1, "label": 1, "logits": [0, 0, 0.5, 0]},
        {"key": "a#2", "video": "a", "view": 2, "fold": 1, "label": 1, "logits": [0, 0, 0.5, 0]},
    ]
    table = load_predictions([jsonl_writer("p.jsonl", rows)], protocol)
    (merged,) = merge_views(table, "classification")
    expected = softmax(np.array([r["logits"] for r in rows], dtype=float)).mean(axis=0)
    np.testing.assert_allclose(merged.scores[0], expected)
    assert merged.predicted.tolist() == [1]
    assert merged.scores.sum(axis=1) == pytest.approx([1.0])


def test_regression_averages_raw_outputs(jsonl_writer) -> None:
    protocol = get_protocol("werewolf-xl")
    rows = [
        {"key": "v", "view": 0, "label": [0.1, 0.2, 0.3], "prediction": [1.0, 0.0, 2.0]},
        {"key": "v", "view": 1, "label": [0.1, 0.2, 0.3], "prediction": [3.0, 2.0, 0.0]},
    ]
    table = load_predictions([jsonl_writer("r.jsonl", rows)], protocol)
    (merged,) = merge_views(table, "regression")
    np.testing.assert_allclose(merged.scores, [[2.0, 1.0, 1.0]])


def _fold_rows(
    fold: int, labels: np.ndarray, preds: np.ndarray, epoch: int | None = None, views: int = 2
) -> list[dict]:
    rows = []
    for i, (y, p) in enumerate(zip(labels, preds, strict=False)):
        for v in range(views):
            row = {
                "key": f"f{fold}_{i}_{v}",
                "video": f"f{fold}_{i}",
                "view": v,
                "fold": fold,
                "label": int(y),
                "logits": _logit(int(p), 7),
            }
            if epoch is not None:
                row["epoch"] = epoch
            rows.append(row)
    return rows


def test_mean_over_folds_matches_sklearn(jsonl_writer) -> None:
    protocol = get_protocol("dfew")
    rng = np.random.default_rng(1)
    files, expected_uar, expected_war = [], [], []
    for fold in range(1, 6):
        y = rng.integers(0, 7, 60)
        p = np.where(rng.random(60) < 0.6, y, rng.integers(0, 7, 60))
        files.append(jsonl_writer(f"fold{fold}.jsonl", _fold_rows(fold, y, p)))
        expected_uar.append(skm.balanced_accuracy_score(y, p))
        expected_war.append(skm.accuracy_score(y, p))
    result = score_protocol(load_predictions(files, protocol), protocol)
    assert [f.fold for f in result.folds] == ["1", "2", "3", "4", "5"]
    assert result.summary["uar"] == pytest.approx(np.mean(expected_uar))
    assert result.summary["war"] == pytest.approx(np.mean(expected_war))
    assert result.spread["war"] == pytest.approx(np.std(expected_war))
    assert result.folds[0].num_videos == 60 and not result.warnings


def test_pooled_and_last_fold_aggregation(jsonl_writer) -> None:
    rng = np.random.default_rng(2)
    rows, all_y, all_p = [], [], []
    for subject in range(1, 8):
        y = rng.integers(0, 3, 5)
        p = np.where(rng.random(5) < 0.7, y, rng.integers(0, 3, 5))
        rows += [
            {"key": f"s{subject}_{i}", "fold": f"sub{subject:02d}", "label": int(a), "logits": _logit(int(b), 3)}
            for i, (a, b) in enumerate(zip(y, p, strict=False))
        ]
        all_y += y.tolist()
        all_p += p.tolist()
    casme = get_protocol("casme2")
    result = score_protocol(load_predictions([jsonl_writer("me.jsonl", rows)], casme), casme)
    assert result.summary["uf1"] == pytest.approx(skm.f1_score(all_y, all_p, average="macro", zero_division=0))
    assert result.summary["uar"] == pytest.approx(skm.balanced_accuracy_score(all_y, all_p))
    np.testing.assert_array_equal(result.pooled_confusion, skm.confusion_matrix(all_y, all_p, labels=[0, 1, 2]))

    crema4 = get_protocol("crema-d-4")
    four = [dict(r, logits=r["logits"] + [0.0], fold=int(r["fold"][3:]) % 5 + 1) for r in rows]
    result = score_protocol(load_predictions([jsonl_writer("c4.jsonl", four)], crema4), crema4)
    assert result.folds[-1].fold == "5"
    assert result.summary == result.folds[-1].metrics


def test_epoch_selection_last_and_legacy(jsonl_writer) -> None:
    protocol = get_protocol("dfew")
    y = np.arange(7).repeat(3)
    good, bad = y, (y + 1) % 7
    rows = _fold_rows(1, y, good, epoch=10) + _fold_rows(1, y, bad, epoch=20)
    table = load_predictions([jsonl_writer("e.jsonl", rows)], protocol)
    _, chosen = select_epochs(table, protocol)
    assert chosen == {"1": 20}
    assert score_protocol(table, protocol).summary["war"] == 0.0
    legacy = score_protocol(table, protocol, "legacy-best-epoch-on-test")
    assert legacy.summary["war"] == 1.0 and legacy.folds[0].epoch == 10
    assert any("optimistic" in w for w in legacy.warnings)


def test_fold_count_warning(jsonl_writer) -> None:
    protocol = get_protocol("dfew")
    y = np.arange(7)
    result = score_protocol(load_predictions([jsonl_writer("one.jsonl", _fold_rows(3, y, y))], protocol), protocol)
    assert result.warnings and "5 fold" in result.warnings[0]


def test_csv_predictions(tmp_path: Path) -> None:
    protocol = get_protocol("iemocap")
    path = tmp_path / "p.csv"
    path.write_text(
        "key,video,view,fold,label,logits_0,logits_1,logits_2,logits_3\na,a,0,1,0,5,0,0,0\nb,b,0,1,2,0,0,5,0\n",
        encoding="utf-8",
    )
    other = tmp_path / "q.csv"
    other.write_text('key,fold,label,prediction\nc,2,3,3\nd,2,1,"[0.1, 0.7, 0.1, 0.1]"\n', encoding="utf-8")
    result = score_protocol(load_predictions([path, other], protocol), protocol)
    assert result.summary["war"] == 1.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"video": "a", "label": 0, "logits": [1, 0, 0, 0]}', "missing 'key'"),
        ('{"key": "a", "label": 0}', "exactly one of 'logits' or 'prediction'"),
        ('{"key": "a", "label": 0, "logits": [1, 0]}', "output has 2 values"),
        ('{"key": "a", "label": 9, "logits": [1, 0, 0, 0]}', "label 9 out of range"),
        ('{"key": "a", "label": 1.5, "logits": [1, 0, 0, 0]}', "label must be an integer"),
        ('{"key": "a", "label": 0, "logits": [1, "x", 0, 0]}', "non-number"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = '{"key": "ok", "label": 0, "logits": [1, 0, 0, 0]}'
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(PredictionFormatError, match=message) as error:
        load_predictions([path], get_protocol("iemocap"))
    assert f"{path}:3:" in str(error.value)


def test_inconsistent_views_and_duplicates(jsonl_writer) -> None:
    protocol = get_protocol("iemocap")
    rows = [
        {"key": "a0", "video": "a", "view": 0, "label": 0, "logits": [1, 0, 0, 0]},
        {"key": "a1", "video": "a", "view": 1, "label": 2, "logits": [1, 0, 0, 0]},
    ]
    with pytest.raises(PredictionFormatError, match="label differs"):
        score_protocol(load_predictions([jsonl_writer("x.jsonl", rows)], protocol), protocol)
    rows[1].update(label=0, view=0)
    with pytest.raises(PredictionFormatError, match="appears twice"):
        score_protocol(load_predictions([jsonl_writer("y.jsonl", rows)], protocol), protocol)


def test_avf_train_rows_and_default_folds(jsonl_writer) -> None:
    """avf-train's predict rows (no fold/epoch, regression `label`/`prediction` lists, extra `probs`,
    `segment`, `crop`) score as they are."""
    werewolf = get_protocol("werewolf-xl")
    rng = np.random.default_rng(3)
    files = []
    for fold in range(1, 6):
        rows = []
        for i in range(10):
            target = rng.normal(size=3).tolist()
            for view in range(2):
                rows.append(
                    {
                        "key": f"{fold}_{i}",
                        "label": target,
                        "view": view,
                        "segment": view,
                        "crop": 0,
                        "prediction": rng.normal(size=3).tolist(),
                    }
                )
        files.append(jsonl_writer(f"fold{fold}.jsonl", rows))
    result = score_protocol(load_predictions(files, werewolf), werewolf)
    assert [f.fold for f in result.folds] == ["1", "2", "3", "4", "5"] and not result.warnings
    assert all(f.num_videos == 10 for f in result.folds)

    iemocap = get_protocol("iemocap")
    rows = [
        {"key": "a", "label": 2, "view": v, "logits": [0, 0, 3, 0], "probs": [0.1, 0.1, 0.7, 0.1]} for v in range(4)
    ]
    result = score_protocol(load_predictions([jsonl_writer("c.jsonl", rows)], iemocap), iemocap)
    assert result.summary["war"] == 1.0 and result.folds[0].num_videos == 1
