"""Labelled import (CSV -> labelled shards + classes.json), inspect, config and CLI."""

from __future__ import annotations

import json

import pytest

from avf_data.shards import iter_clips


def read_jsonl(path) -> list[dict]:
    import json as _json
    from pathlib import Path as _Path

    return [_json.loads(x) for x in _Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def labelled(demo_build, tmp_path_factory):
    from avf_data.cli import main

    d = demo_build["inputs"]
    tmp = tmp_path_factory.mktemp("import")
    csv = tmp / "labels.csv"
    csv.write_text(
        "path,label,subject,fold,target_valence,target_arousal\n"
        f"{d['single_face']},happy,s1,0,0.5,0.2\n"
        f"{d['scene_cut']},sad,s2,1,-0.4,0.1\n"
        f"{d['no_face']},sad,s3,1,0.0,0.0\n"
        "missing.mp4,happy,s4,0,0,0\n"
        f"{d['two_faces']},,s5,0,0,0\n"
        f"{d['long_silence']},happy,s6,x,0,0\n"
    )
    out = tmp / "out"
    assert main(["import", str(csv), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    return out


def test_import_writes_labelled_shards(labelled):
    classes = json.loads((labelled / "classes.json").read_text())
    assert classes["classes"] == ["happy", "sad"]
    manifest = read_jsonl(labelled / "manifest.jsonl")
    by_label = {r["label_name"]: r for r in manifest}
    assert set(by_label) == {"happy", "sad"}
    # lenient options: the scene_cut video stays one clip (no scene/silence split)
    assert len([r for r in manifest if "scene_cut" in r["source"]]) == 1
    clips = list(iter_clips(labelled / "shards"))
    assert len(clips) == 2
    for c in clips:
        assert c.label == classes["classes"].index(c.meta["label_name"])
        assert c.meta["subject"] in ("s1", "s2") and isinstance(c.meta["fold"], int)
        assert len(c.meta["targets"]) == 2 and c.frames.shape[1:] == (160, 160, 3)


def test_import_bad_rows_are_rejects(labelled):
    rejects = read_jsonl(labelled / "rejects.jsonl")
    codes = sorted(r["code"] for r in rejects)
    assert codes == ["decode.missing", "face.none", "import.row", "import.row"], codes
    reasons = " | ".join(r["reason"] for r in rejects if r["code"] == "import.row")  # one code: the text says which
    assert "empty label" in reasons and "fold" in reasons
    assert any(r["code"] == "face.none" and "no_face" in r["source"] for r in rejects)


def test_import_no_curate(demo_build, tmp_path):
    from avf_data.importer import import_csv

    csv = tmp_path / "l.csv"
    csv.write_text(f"{demo_build['inputs']['no_face']},2\n{demo_build['inputs']['two_faces']},0\n")
    stats = import_csv(csv, tmp_path / "o", curate=False, workers=1, progress=False)
    assert stats["clips"] == 2 and stats["classes"] == ["0", "1", "2"]
    clips = {c.meta["label"]: c for c in iter_clips(tmp_path / "o" / "shards")}
    assert set(clips) == {0, 2} and clips[2].frames.shape[1:] == (160, 160, 3)


def test_inspect_reads_indexes_not_tar_members(demo_build, labelled, capsys, monkeypatch):
    from avf_data import inspect_cmd
    from avf_data.cli import main

    def no_reading(*args, **kwargs):
        raise AssertionError("inspect opened a shard")

    with monkeypatch.context() as m:  # by default: the indexes, stats.json, classes.json only
        m.setattr(inspect_cmd, "iter_raw_samples", no_reading)
        m.setattr(__import__("tarfile"), "open", no_reading)
        info = inspect_cmd.summarize(demo_build["out"])
        assert info["samples"] == 6 and info["extensions"] == {"json": 6, "mp4": 6, "wav": 6}
        assert info["seconds"] == pytest.approx(demo_build["stats"]["seconds_accepted"], abs=0.01)
        assert info["stats"]["sync_scorer"] == "fallback_motion_envelope" and not info["problems"]
        assert "example" not in info
        assert main(["inspect", str(labelled)]) == 0
        text = capsys.readouterr().out
        assert "2 samples" in text and "classes" in text and "samples per class index" in text
    info = inspect_cmd.summarize(demo_build["out"], verify=True)  # --verify reads every sample
    assert info["duplicate_keys"] == 0 and info["verified"]["samples"] == 6 and not info["problems"]
    assert info["example"]["frames"][1:] == [160, 160, 3]


def test_config_yaml(tmp_path):
    from avf_data.config import BuildConfig, load_config

    p = tmp_path / "c.yaml"
    p.write_text("crop:\n  out_size: 224\n  margin: 2\nsilence:\n  max_clip_seconds: 10\nworkers_typo: 1\n")
    with pytest.raises(ValueError, match="unknown config key 'workers_typo'"):
        load_config(p)
    p.write_text("crop:\n  out_size: 224\n  margin: 2\nsilence:\n  max_clip_seconds: 10\n")
    cfg = load_config(p)
    assert cfg.crop.out_size == 224 and cfg.crop.margin == 2.0 and cfg.silence.max_clip_seconds == 10.0
    assert BuildConfig.from_dict(cfg.to_dict()) == cfg
    p.write_text("crop:\n  out_size: big\n")
    with pytest.raises(ValueError, match="out_size"):
        load_config(p)


def test_cli_help_teaches(capsys):
    from avf_data.cli import main

    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = capsys.readouterr().out
    for word in ("--demo", "--engine", "--syncnet-weights", "manifest.jsonl", "rejects.jsonl", "RetinaFace"):
        assert word in text


def test_label_maps_for_import(tmp_path):
    """--protocol numbers by the registry, --classes FILE by a list; label_id must agree with label."""
    from avf_data.importer import read_class_list, read_label_csv

    csv = tmp_path / "fold.csv"
    csv.write_text(
        "key,label,label_id\n"
        "a.mp4,NEU,2\n"  # CREMA-D code, agrees with label_id
        "b.mp4,sad,1\n"  # disagrees: sadness is 3 in crema-d-4
        "c.mp4,DIS,\n"  # dropped by the 4-class protocol
        "d.mp4,,0\n"  # label_id alone
        "a.mp4,NEU,2\n"
    )  # duplicate
    table = read_label_csv(csv, protocol="crema-d-4")
    labels, space, rejects, rows = table.labels, table.space, table.rejects, table.rows
    assert space.classes == ("anger", "happiness", "neutral", "sadness") and rows == 5
    assert {k.rsplit("/", 1)[-1]: v["label"] for k, v in labels.items()} == {"a.mp4": 2, "d.mp4": 0}
    assert labels[str(tmp_path / "a.mp4")]["classes"] == list(space.classes)
    assert len(rejects) == 3 and {(r["stage"], r["code"]) for r in rejects} == {("import", "import.row")}
    reasons = " | ".join(r["reason"] for r in rejects)
    assert "label_id 1 disagrees" in reasons and "dropped label 'DIS'" in reasons and "duplicate path" in reasons
    with pytest.raises(ValueError, match="label_id column"):
        read_label_csv(csv)  # indices without names
    # --classes FILE: a previous import's classes.json keeps its order
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["sad", "neu", "ang"], "num_classes": 3}))
    assert read_class_list(str(tmp_path / "classes.json")) == ["sad", "neu", "ang"]
    assert read_class_list("x, y") == ["x", "y"]
    plain = tmp_path / "plain.csv"
    plain.write_text("a.mp4,NEU\nb.mp4,ang\n")
    table = read_label_csv(plain, classes=read_class_list(str(tmp_path / "classes.json")))
    assert [v["label"] for v in table.labels.values()] == [1, 2] and not table.inferred
    table = read_label_csv(plain)  # no map given: sorted names of this CSV, flagged
    assert table.space.classes == ("NEU", "ang") and table.inferred
