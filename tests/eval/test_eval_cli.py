"""The avf-eval CLI: score, report, protocols, splits, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avf_eval.cli import main
from avf_eval.protocols import get_protocol
from avf_eval.splits import contiguous_groups, make_folds


def _rows(n_classes: int, folds: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(1, folds + 1):
        for i in range(30):
            y = int(rng.integers(0, n_classes))
            p = y if rng.random() < 0.7 else int(rng.integers(0, n_classes))
            for view in range(2):
                logits = rng.normal(size=n_classes)
                logits[p] += 4
                rows.append(
                    {
                        "key": f"{fold}-{i}-{view}",
                        "video": f"{fold}-{i}",
                        "view": view,
                        "fold": fold,
                        "epoch": 99,
                        "label": y,
                        "logits": logits.round(4).tolist(),
                    }
                )
    return rows


def test_score_text_markdown_json(jsonl_writer, capsys: pytest.CaptureFixture[str]) -> None:
    path = jsonl_writer("p.jsonl", _rows(8, 6))
    assert main(["score", "--protocol", "ravdess", "--predictions", str(path)]) == 0
    out = capsys.readouterr().out
    assert "AVF-MAE++ (H)" in out and "87.44" in out and "HiCMAE-B" in out and "87.96" in out
    assert main(["score", "-p", "ravdess", "-i", str(path), "--format", "markdown"]) == 0
    assert "| UAR |" in capsys.readouterr().out
    assert main(["score", "-p", "ravdess", "-i", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["folds"]) == 6 and 0.0 <= data["summary"]["war"] <= 1.0


def test_score_errors_are_one_line(jsonl_writer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "a", "label": 0, "logits": [1, 0]}\n', encoding="utf-8")
    assert main(["score", "-p", "ravdess", "-i", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1:" in err and "8 classes" in err
    assert main(["score", "-p", "nope", "-i", str(bad)]) == 2
    assert "unknown protocol" in capsys.readouterr().err
    assert main(["score", "-p", "ravdess", "-i", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such predictions file" in capsys.readouterr().err


def test_report_writes_markdown_html_and_pngs(jsonl_writer, tmp_path: Path) -> None:
    path = jsonl_writer("p.jsonl", _rows(11, 2))
    out = tmp_path / "report"
    assert main(["report", "-p", "mafw-11", "-i", str(path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "confusion_all.png" in md and "76.14" in md  # per-class recall of AVF-MAE++ (B), Tab. 7
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    for png in ["confusion_all.png", "confusion_fold_1.png", "confusion_fold_2.png"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_regression(jsonl_writer, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [
        {
            "key": str(i),
            "fold": i % 5 + 1,
            "label": rng.normal(size=3).tolist(),
            "prediction": rng.normal(size=3).tolist(),
        }
        for i in range(50)
    ]
    out = tmp_path / "r"
    assert (
        main(
            ["report", "-p", "werewolf-xl", "-i", str(jsonl_writer("r.jsonl", rows)), "-o", str(out), "--format", "md"]
        )
        == 0
    )
    assert "PCC arousal" in (out / "report.md").read_text() and (out / "scatter_all.png").exists()


def test_protocols_listing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocols"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ["mafw-43", "casme3", "avcaffe-valence", "werewolf-xl"])
    assert main(["protocols", "iemocap"]) == 0
    assert "excitement -> happiness" in capsys.readouterr().out


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "softmax per view" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert "legacy-best-epoch-on-test" in capsys.readouterr().out


def test_subject_independent_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subjects = [f"{1001 + s}" for s in range(91)]
    meta = pd.DataFrame(
        {
            "key": [f"{s}_{i}" for s in subjects for i in range(3)],
            "subject": [s for s in subjects for _ in range(3)],
            "label": ["anger", "fear", "happiness"] * 91,
        }
    )
    folds = make_folds(meta, get_protocol("crema-d-6"))
    assert [len(f.test_groups) for f in folds] == [18, 18, 18, 18, 19]  # HiCMAE's CREMA-D cut
    for fold in folds:
        test_subjects = set(meta.set_index("key").loc[list(fold.test), "subject"])
        train_subjects = set(meta.set_index("key").loc[list(fold.train), "subject"])
        assert not test_subjects & train_subjects
        assert len(fold.train) + len(fold.test) == len(meta)
    assert sorted(k for f in folds for k in f.test) == sorted(meta["key"])
    csv = tmp_path / "meta.csv"
    meta.to_csv(csv, index=False)
    assert main(["splits", "-p", "crema-d-4", "-m", str(csv), "-o", str(tmp_path / "s")]) == 0
    test1 = pd.read_csv(tmp_path / "s" / "fold01" / "test.csv")
    assert set(test1["label_id"]) == {0, 1}  # fear is dropped in the 4-class subset
    assert "fold 5:" in capsys.readouterr().out


def test_session_loso_and_official_splits() -> None:
    meta = pd.DataFrame(
        {
            "key": [f"k{i}" for i in range(20)],
            "session": [f"Ses0{i % 5 + 1}" for i in range(20)],
            "subject": [f"s{i % 4}" for i in range(20)],
            "split": ["train"] * 15 + ["val"] * 5,
        }
    )
    folds = make_folds(meta, get_protocol("iemocap"))
    assert [f.test_groups for f in folds] == [("Ses01",), ("Ses02",), ("Ses03",), ("Ses04",), ("Ses05",)]
    assert len(make_folds(meta, get_protocol("samm"))) == 4
    (official,) = make_folds(meta, get_protocol("mer24-tv"))
    assert len(official.train) == 15 and len(official.test) == 5
    with pytest.raises(ValueError, match="'fold' column"):
        make_folds(meta, get_protocol("dfew"))
    assert contiguous_groups(["s10", "s2", "s1"], 3) == [["s1"], ["s2"], ["s10"]]


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refusing the command line
        return int(exc.code)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["score", "-p", "nope", "-i", "p.jsonl"], "unknown protocol"),
        (["protocols", "nope"], "unknown protocol"),
        (["report", "-p", "dfew", "-i", "missing.jsonl", "-o", "r"], "missing.jsonl: no such predictions file"),
        (["splits", "-p", "dfew", "-m", "missing.csv", "-o", "s"], "missing.csv"),
        (["predict", "missing.mp4", "-c", "x.pt", "--device", "cpu"], "video missing.mp4 does not exist"),
        (["score", "-p", "dfew"], "--predictions"),
        (["score", "-p", "dfew", "-i", "p.jsonl", "--format", "yaml"], "invalid choice: 'yaml'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    argv: list[str], words: str, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI contract of every avf command: unknown input -> one line `avf-eval: error: ...`, status 2."""
    monkeypatch.chdir(tmp_path)
    assert _exit_code(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avf-eval: error: ") and words in lines[0], lines
    assert not captured.out and not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
