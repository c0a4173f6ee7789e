"""End to end on the demo inputs: outputs, per-input outcomes, the accounting invariant."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from build_logs import input_records

from avf_data.shards import expand_shards, iter_clips, iter_raw_samples


def read_jsonl(path) -> list[dict]:
    import json as _json
    from pathlib import Path as _Path

    return [_json.loads(x) for x in _Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def _by_source(rows, name):
    return [r for r in rows if Path(r["source"]).stem == name]


def test_outputs_exist(demo_build):
    out = demo_build["out"]
    for name in ("manifest.jsonl", "rejects.jsonl", "stats.json", "report.md", "contact_sheet.png", "build.jsonl"):
        assert (out / name).is_file(), name
    assert list((out / "shards").glob("*.tar")) and not list((out / "shards").glob("*.tmp"))
    assert not list((out / "segments").iterdir())  # every finished task's clips are packed


def test_per_input_outcomes(demo_build):
    man, rej = demo_build["manifest"], demo_build["rejects"]
    assert len(_by_source(man, "single_face")) == 1
    assert len(_by_source(man, "scene_cut")) == 2
    assert len(_by_source(man, "long_silence")) == 2
    assert any(r["stage"] == "silence" and r["seconds"] > 2.5 for r in _by_source(rej, "long_silence"))
    for name, stage, code in [
        ("two_faces", "face", "face.several"),
        ("no_face", "face", "face.none"),
        ("corrupt", "decode", "decode.corrupt"),
    ]:
        assert not _by_source(man, name), name
        assert any(r["stage"] == stage and r["code"] == code for r in _by_source(rej, name)), name
    # no SyncNet weights: the shifted clip is kept, and the estimate raises no sync.* flag
    assert not [r for r in rej if r["stage"] == "sync"]
    assert not [f for r in man for f in r.get("flags", []) if f.startswith("sync.")]


def test_without_weights_sync_is_an_estimate_not_a_verdict(demo_build):
    """The weight-free scorer sees the 0.5 s shift, and it is recorded as what it is: an
    estimate (``sync_estimate``), with no offset, confidence or flag that reads like a verdict."""
    rows = _by_source(demo_build["manifest"], "shifted_audio")
    assert rows and rows[0]["sync_method"] == "fallback_motion_envelope" and rows[0]["sync_enforced"] is False
    assert rows[0]["sync_offset"] is None and rows[0]["sync_confidence"] is None and "flags" not in rows[0]
    assert rows[0]["sync_estimate"]["offset_frames"] <= -8  # audio delayed 0.5 s = 12 frames
    assert demo_build["stats"]["sync_scorer"] == "fallback_motion_envelope"
    assert demo_build["stats"]["sync_enforced"] is False
    report = (demo_build["out"] / "report.md").read_text()
    assert "fallback_motion_envelope" in report and "sync NOT enforced" in report


def test_fallback_sync_enforced_on_request(demo_inputs):
    """sync.enforce_fallback lets the weight-free scorer reject (synthetic data only)."""
    from avf_data.config import load_config
    from avf_data.pipeline import process_input

    cfg = load_config(overrides={"sync.enforce_fallback": True})
    r = process_input(str(demo_inputs["shifted_audio"]), cfg)
    assert r["manifest"] == [] and r["sync_enforced"] is True
    assert [x["code"] for x in r["rejects"] if x["stage"] == "sync"] == ["sync.offset"]


def test_every_second_is_accounted_for(demo_build):
    """accepted + rejected seconds == input seconds per source (within one frame); no overlap."""
    done = list(input_records(demo_build["out"]))
    assert sorted(Path(r["source"]).stem for r in done) == sorted(demo_build["inputs"])
    spans = defaultdict(list)
    for r in demo_build["manifest"] + demo_build["rejects"]:
        spans[r["source"]].append((r["start"], r["end"]))
    for rec in done:
        iv = sorted(spans[rec["source"]])
        assert iv, rec["source"]
        total = sum(b - a for a, b in iv)
        assert abs(total - rec["seconds"]) < 0.04 + 1e-6, (rec["source"], total, rec["seconds"])
        assert iv[0][0] == 0.0 and abs(iv[-1][1] - rec["seconds"]) < 0.04 + 1e-6
        assert all(abs(a2 - b1) < 1e-6 for (_, b1), (a2, _) in zip(iv, iv[1:], strict=False)), iv  # contiguous
    st = demo_build["stats"]
    assert abs(st["seconds_accepted"] + st["seconds_rejected"] - st["seconds_in"]) < 0.04 * st["inputs"]


def test_samples_match_manifest_and_format(demo_build):
    out = demo_build["out"]
    keys = [s["__key__"] for s in iter_raw_samples(expand_shards(out / "shards"))]
    assert sorted(keys) == sorted(r["key"] for r in demo_build["manifest"])
    assert len(set(keys)) == len(keys)
    row = _by_source(demo_build["manifest"], "single_face")[0]
    clip = next(c for c in iter_clips(out / row["shard"]) if c.key == row["key"])
    assert clip.frames.shape[1:] == (160, 160, 3) and clip.fps == 25 and clip.sample_rate == 16000
    assert abs(len(clip.frames) / 25 - len(clip.audio) / 16000) < 0.04
    meta = clip.meta
    for k in (
        "source",
        "start",
        "end",
        "fps",
        "boxes",
        "detector",
        "sync_estimate",
        "sync_method",
        "sync_enforced",
        "blur",
        "pipeline_version",
    ):
        assert k in meta, k
    assert len(meta["boxes"]) == len(clip.frames)
    assert meta["sync_estimate"]["method"] == "fallback_motion_envelope" and "sync" not in meta


def test_clips_are_packed_in_input_order(demo_build):
    """7 inputs, 2 workers, two tasks: their clips are packed, in input order, into one shard
    (the demo is far below output.shard_size); manifest row i is sample i of that shard."""
    from avf_data.build import group_tasks

    out = demo_build["out"]
    tasks = group_tasks([(str(p), None) for p in demo_build["inputs"].values()], 16, 2)
    assert [len(t.items) for t in tasks] == [4, 3] and demo_build["stats"]["run"]["tasks"] == 2
    assert [p.name for p in (out / "shards").glob("*.tar")] == ["shard-000000.tar"]
    man = demo_build["manifest"]
    assert {r["shard"] for r in man} == {"shards/shard-000000.tar"}
    order = [str(p) for t in tasks for p, _ in t.items]
    assert [r["source"] for r in man] == sorted((r["source"] for r in man), key=order.index)
    keys = [s["__key__"] for s in iter_raw_samples([str(out / "shards" / "shard-000000.tar")])]
    assert keys == [r["key"] for r in man]
    assert demo_build["stats"]["shards"] == {
        "count": 1,
        "pattern": "shards/shard-000000.tar",
        "bytes": (out / "shards" / "shard-000000.tar").stat().st_size,
    }


def test_stats_and_report(demo_build):
    st = demo_build["stats"]
    assert st["inputs"] == 7 and st["clips"] == 6
    assert st["stages"]["decode"] == {
        "in": 7,
        "out": 6,
        "seconds_in": pytest.approx(st["seconds_in"]),
        "seconds_out": pytest.approx(st["seconds_in"]),
    }
    assert st["stages"]["face"]["in"] - st["stages"]["face"]["out"] == 2
    assert st["run"]["frames_per_second"] > 0 and st["run"]["wall_seconds"] > 0
    report = (demo_build["out"] / "report.md").read_text()
    assert "sync scorer" in report and "contact_sheet.png" in report
    assert "`face.several`" in report and "## Per input" in report and "corrupt.mp4" in report
    assert set(st["rejects_by_code"]) >= {"face.several", "face.none", "decode.corrupt", "silence.silence"}
    from PIL import Image

    assert Image.open(demo_build["out"] / "contact_sheet.png").size[0] > 300


def test_rerun_skips_finished_inputs(demo_build, tmp_path):
    """A rerun into a finished folder processes nothing and leaves the outputs equal."""
    from avf_data.build import build

    before = (demo_build["out"] / "manifest.jsonl").read_text()
    shards = {p.name: p.stat().st_mtime_ns for p in (demo_build["out"] / "shards").glob("*.tar")}
    stats = build([str(p) for p in demo_build["inputs"].values()], demo_build["out"], workers=1, progress=False)
    assert stats["run"]["inputs_processed"] == 0 and stats["run"]["inputs_skipped_resume"] == 7
    assert stats["run"]["orphan_shards_removed"] == 0
    assert (demo_build["out"] / "manifest.jsonl").read_text() == before
    assert {p.name: p.stat().st_mtime_ns for p in (demo_build["out"] / "shards").glob("*.tar")} == shards


def test_long_inputs_are_curated_in_chunks(demo_inputs):
    """chunk_seconds bounds memory; accounting and keys still hold across chunk boundaries."""
    from avf_data.config import BuildConfig
    from avf_data.pipeline import process_input

    cfg = BuildConfig()
    cfg.media.chunk_seconds = 3.0
    r = process_input(str(demo_inputs["long_silence"]), cfg)
    assert len(r["manifest"]) == 2
    spans = sorted((x["start"], x["end"]) for x in r["manifest"] + r["rejects"])
    assert spans[0][0] == 0.0 and abs(spans[-1][1] - r["seconds"]) < 1e-6
    assert all(abs(a2 - b1) < 1e-6 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    keys = [x["key"] for x in r["manifest"]]
    assert len(set(keys)) == len(keys)


def test_curate_video_in_memory(demo_inputs):
    """The in-memory API (used by avf-eval's predict) returns clips and rejects, writes nothing."""
    from avf_data.pipeline import curate_video

    clips, rejects = curate_video(demo_inputs["long_silence"])
    assert len(clips) == 2 and clips[0].meta["start"] < clips[1].meta["start"]
    assert clips[0].frames.shape[1:] == (160, 160, 3) and clips[0].audio.dtype.name == "float32"
    assert any(r["stage"] == "silence" for r in rejects)


@pytest.mark.slow
def test_syncnet_weights_are_used_end_to_end(demo_media, tmp_path):
    """--syncnet-weights switches stage 5 to SyncNet (random weights here: only the wiring is tested)."""
    import torch

    from avf_data.build import build
    from avf_data.demo import write_av
    from avf_data.stages import syncnet

    torch.manual_seed(0)
    sd = {
        k: (torch.ones(shape) if k.endswith("running_var") else torch.randn(shape) * 0.05)
        for k, shape in syncnet._official_shapes().items()
    }
    weights = tmp_path / "syncnet_v2.model"
    torch.save(sd, weights)
    m = demo_media("single_face")
    clip = write_av(tmp_path / "short.mp4", m.frames[5:55], m.audio[5 * 640 : 55 * 640])
    stats = build([str(clip)], tmp_path / "out", workers=0, weights=str(weights), progress=False)
    assert stats["sync_scorer"] == "syncnet_v2"
    rows = read_jsonl(tmp_path / "out" / "manifest.jsonl") + read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert any(
        (r.get("sync_method") == "syncnet_v2") or (r.get("sync", {}).get("method") == "syncnet_v2") for r in rows
    )
    assert "syncnet_v2" in (tmp_path / "out" / "report.md").read_text()


def test_unexpected_error_rejects_the_input_only(demo_inputs, monkeypatch):
    """A library error inside a stage becomes one 'error' reject row covering the input."""
    from avf_data import pipeline
    from avf_data.config import BuildConfig

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    from avf_data.stages import crop

    monkeypatch.setattr(crop, "plan_track", boom)
    r = pipeline.process_input(str(demo_inputs["single_face"]), BuildConfig())
    assert r["manifest"] == [] and len(r["rejects"]) == 1
    row = r["rejects"][0]
    assert row["stage"] == "error" and row["code"] == "error.internal" and "boom" in row["reason"]
    assert row["start"] == 0.0 and row["end"] == r["seconds"] > 0
    json.dumps(r)


@pytest.mark.slow
def test_two_builds_of_the_same_inputs_are_byte_identical(demo_build, tmp_path):
    """Same inputs and config: the same bytes in every shard, index, manifest and rejects file,
    whatever the worker count (the session's build ran 2 workers, this one runs inline)."""
    from avf_data.build import build

    out = tmp_path / "again"
    build([str(p) for p in demo_build["inputs"].values()], out, workers=0, progress=False)
    first = demo_build["out"]
    names = sorted(p.name for p in (first / "shards").iterdir())
    assert names == sorted(p.name for p in (out / "shards").iterdir())
    for name in names:
        assert (first / "shards" / name).read_bytes() == (out / "shards" / name).read_bytes(), name
    for name in ("manifest.jsonl", "rejects.jsonl"):
        assert (first / name).read_bytes() == (out / name).read_bytes(), name
