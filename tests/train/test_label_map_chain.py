"""One class order from import to score (issue 11): a test fold that lacks classes keeps the
protocol's indices through avf-data import -> avf-train finetune --val-data -> predictions ->
avf-eval score/report, and every place where two label maps meet refuses a mismatch in one line.

IEMOCAP in its native codes: the train fold has all four classes (``exc`` merges into
happiness, ``fru`` is dropped), the test fold only neutral and sadness. Numbered by the sorted
names of its own CSV, the test fold would call them 0 and 1; the protocol says 2 and 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from run_args import SMALL, TINY_MODEL

from avf_data.cli import main as avf_data
from avf_data.shards import iter_clips
from avf_eval.cli import main as avf_eval
from avf_eval.protocols import get_protocol
from avf_train.cli import main as avf_train

IEMOCAP = ["anger", "happiness", "neutral", "sadness"]
TRAIN_ROWS = [
    ("v0", "ang"),
    ("v1", "hap"),
    ("v2", "exc"),
    ("v3", "neu"),
    ("v4", "sad"),
    ("v5", "ANG"),
    ("v6", "fru"),
    ("v0", "sad"),
]  # v6: dropped by the protocol; the second v0: a duplicate
TEST_ROWS = [("v7", "neu"), ("v8", "sad"), ("v9", "Sadness")]
FAST = [*TINY_MODEL, *SMALL, "--max-steps", "1"]


def _write_videos(folder: Path, count: int) -> None:
    """Tiny talking-head-free clips (2.9 s, 96x96, speech audio): --no-curate only resamples them."""
    from avf_data.demo import FPS, SAMPLE_RATE, load_speech, write_av

    speech = load_speech(1)
    hop = SAMPLE_RATE // FPS
    for i in range(count):
        rng = np.random.default_rng(i)
        frames = rng.integers(0, 255, size=(72, 96, 96, 3), dtype=np.uint8)
        write_av(folder / f"v{i}.mp4", frames, speech[i * 2000 : i * 2000 + 72 * hop])


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text(
        "path,label,subject\n" + "".join(f"videos/{v}.mp4,{lab},s{i % 3}\n" for i, (v, lab) in enumerate(rows))
    )
    return path


def _import(csv: Path, out: Path, *extra: str) -> int:
    return avf_data(["import", str(csv), "--out", str(out), "--no-curate", "--workers", "0", "--no-progress", *extra])


def _one_error_line(err: str, prog: str = "avf-train") -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("label_chain")
    (root / "videos").mkdir()
    _write_videos(root / "videos", 10)
    out = {
        "root": root,
        "train_csv": _csv(root / "train.csv", TRAIN_ROWS),
        "test_csv": _csv(root / "test.csv", TEST_ROWS),
    }
    for name in ("train", "test"):
        assert _import(out[f"{name}_csv"], root / name, "--protocol", "iemocap") == 0
        out[name] = root / name / "shards" / "*.tar"
    return out


def test_import_numbers_every_fold_by_the_protocol(data, capsys):
    for name in ("train", "test"):
        classes = json.loads((data["root"] / name / "classes.json").read_text())
        assert classes["classes"] == IEMOCAP and classes["protocol"] == "iemocap"
    test = {c.meta["label_name"]: c for c in iter_clips(data["root"] / "test" / "shards")}
    assert {name: c.label for name, c in test.items()} == {"neutral": 2, "sadness": 3}
    assert all(c.meta["classes"] == IEMOCAP and c.meta["protocol"] == "iemocap" for c in test.values())
    train = sorted(c.label for c in iter_clips(data["root"] / "train" / "shards"))
    assert train == [0, 0, 1, 1, 2, 3]  # ang, ANG / hap, exc / neu / sad
    # the summary counts the CSV rows it rejected, duplicates included
    assert _import(data["train_csv"], data["root"] / "train", "--protocol", "iemocap") == 0  # resume: nothing new
    out = capsys.readouterr().out
    assert "8 rows -> 6 inputs, 2 rejected" in out and "1 duplicate path" in out and "1 dropped label" in out


def test_finetune_val_predictions_and_report_keep_the_protocol_order(data, tmp_path, capsys):
    run = tmp_path / "ft"
    assert (
        avf_train(["finetune", "--data", str(data["train"]), "--val-data", str(data["test"]), "--out", str(run), *FAST])
        == 0
    )  # no --num-classes: 4, from the shards' label map
    ckpt = torch.load(run / "checkpoint", weights_only=True)
    assert ckpt["class_names"] == IEMOCAP and ckpt["label_protocol"] == "iemocap"
    assert ckpt["model"]["head.weight"].shape[0] == 4 and ckpt["config"]["data"]["label_map"]["classes"] == IEMOCAP
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert sorted({r["key"]: r["label"] for r in rows}.values()) == [2, 3, 3]
    assert all(r["classes"] == IEMOCAP and r["protocol"] == "iemocap" for r in rows)

    capsys.readouterr()
    assert avf_eval(["score", "-p", "iemocap", "-i", str(run / "predictions.jsonl")]) == 0
    assert (
        avf_eval(
            [
                "report",
                "-p",
                "iemocap",
                "-i",
                str(run / "predictions.jsonl"),
                "-o",
                str(tmp_path / "r"),
                "--format",
                "md",
            ]
        )
        == 0
    )
    report = (tmp_path / "r" / "report.md").read_text()
    support = {
        ln.split("|")[1].strip(): int(ln.split("|")[2])
        for ln in report.splitlines()
        if ln.startswith("| ") and ln.split("|")[1].strip() in IEMOCAP
    }
    assert support == {"anger": 0, "happiness": 0, "neutral": 1, "sadness": 2}
    # a protocol with other class names refuses the file in one line
    capsys.readouterr()
    assert avf_eval(["score", "-p", "avcaffe-arousal", "-i", str(run / "predictions.jsonl")]) == 2
    assert "label map" in _one_error_line(capsys.readouterr().err, "avf-eval")


def test_mismatched_label_maps_are_refused(data, tmp_path, capsys):
    # the test fold imported on its own: sorted names of its CSV, with a warning
    alone = tmp_path / "alone"
    assert _import(data["test_csv"], alone) == 0
    assert "--protocol" in capsys.readouterr().err
    assert json.loads((alone / "classes.json").read_text())["classes"] == ["Sadness", "neu", "sad"]
    shards = str(alone / "shards" / "*.tar")

    def refused(args: list[str], words: str) -> None:
        capsys.readouterr()
        assert avf_train(args) == 2
        assert words in _one_error_line(capsys.readouterr().err)

    base = ["finetune", "--data", str(data["train"]), *FAST]
    refused([*base, "--val-data", shards, "--out", str(tmp_path / "a")], "--val-data as ['Sadness', 'neu', 'sad']")
    refused([*base, "--num-classes", "7", "--out", str(tmp_path / "b")], "--num-classes 7 differs")
    # mixing both imports in one glob
    refused(["finetune", "--data", f"{data['train']},{shards}", *FAST, "--out", str(tmp_path / "c")], "mix label maps")
    # an --init whose head (same size) names the classes in another order
    reversed_map = tmp_path / "reversed.yaml"
    reversed_map.write_text("classes: [sadness, neutral, happiness, anger]\n")
    post = tmp_path / "post"
    assert (
        avf_train(
            [
                "postpretrain",
                "--data",
                str(data["train"]),
                "--out",
                str(post),
                "--set",
                f"data.label_map={reversed_map}",
                *FAST,
            ]
        )
        == 0
    )
    refused([*base, "--init", str(post), "--out", str(tmp_path / "d")], "names its 4 outputs")
    # predicting the differently numbered fold with the protocol-numbered model
    fine = tmp_path / "fine"
    assert avf_train([*base, "--out", str(fine)]) == 0
    refused(
        ["predict", "--checkpoint", str(fine), "--data", shards, "--out", str(tmp_path / "p")],
        "number classes as ['Sadness', 'neu', 'sad']",
    )
    # re-importing into a folder numbered by another map
    capsys.readouterr()
    assert _import(data["test_csv"], alone, "--protocol", "iemocap") == 2
    assert "already holds an import" in _one_error_line(capsys.readouterr().err, "avf-data")


def test_splits_output_feeds_import_directly(data, tmp_path):
    """`avf-eval splits` keeps relative paths usable from foldNN/ and writes label_id, which
    `avf-data import --protocol` checks against the label."""
    import pandas as pd

    codes = ["ANG", "HAP", "NEU", "SAD", "DIS", "FEA"]
    meta = data["root"] / "meta.csv"
    meta.write_text(
        "key,path,label,subject\n" + "".join(f"c{i},videos/v{i}.mp4,{codes[i % 6]},s{i % 5}\n" for i in range(10))
    )
    assert avf_eval(["splits", "-p", "crema-d-4", "-m", str(meta), "-o", str(tmp_path / "splits")]) == 0
    fold = tmp_path / "splits" / "fold01" / "test.csv"
    rows = pd.read_csv(fold)
    assert all(Path(p).is_absolute() and Path(p).exists() for p in rows["path"])
    assert _import(fold, tmp_path / "f1", "--protocol", "crema-d-4") == 0
    got = {c.meta["source"].rsplit("/", 1)[-1]: c.label for c in iter_clips(tmp_path / "f1" / "shards")}
    assert got == {Path(p).name: int(i) for p, i in zip(rows["path"], rows["label_id"], strict=False)} and got


def test_protocol_registry_accepts_native_codes_and_follows_megc_for_casme2():
    iemocap, crema, ravdess, casme = (get_protocol(n) for n in ("iemocap", "crema-d-6", "ravdess", "casme2"))
    assert [iemocap.map_label(c) for c in ("ang", "hap", "exc", "neu", "sad", "fru")] == [0, 1, 1, 2, 3, None]
    assert [crema.map_label(c) for c in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")] == [0, 1, 2, 3, 4, 5]
    assert ravdess.map_label("05") == ravdess.classes.index("angry") and ravdess.map_label("fear") == 5
    # MEGC 2019: CASME II negative = disgust + repression; fear and sadness are not merged
    assert casme.map_label("disgust") == casme.map_label("repression") == 0
    assert casme.map_label("fear") is None and casme.map_label("sadness") is None
    assert get_protocol("samm").map_label("fear") == 0  # SAMM's negative does include fear
