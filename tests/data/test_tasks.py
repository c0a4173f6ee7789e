"""Tasks and shards in real builds: grouping, shards by size across reruns, segments."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
from build_logs import read_jsonl, task_lines

from avf_data.config import BuildConfig


def test_group_tasks_is_deterministic():
    from avf_data.build import group_tasks
    from avf_data.pipeline import input_id, task_id

    items = [(f"/data/v{i:02d}.mp4", None) for i in range(40)]
    tasks = group_tasks(items, 16, workers=2)
    assert [len(t.items) for t in tasks] == [16, 16, 8] and [t.seq for t in tasks] == [0, 16, 32]
    assert [p for t in tasks for p, _ in t.items] == [p for p, _ in items]  # order kept, nothing lost
    assert tasks == group_tasks(list(items), 16, workers=2)
    assert tasks[0].task_id == task_id([input_id(p) for p, _ in reversed(items[:16])])  # sorted ids
    assert len({t.task_id for t in tasks}) == 3
    # small runs: every worker gets a task; one worker: as many inputs per task as allowed
    assert [len(t.items) for t in group_tasks(items[:7], 16, workers=2)] == [4, 3]
    assert [len(t.items) for t in group_tasks(items[:7], 3, workers=1)] == [3, 3, 1]
    assert group_tasks([], 16, 4) == []


def test_config_fields_and_old_name():
    from avf_data.config import BuildConfig

    cfg = BuildConfig.from_dict({"output": {"inputs_per_task": 4, "shard_max_count": 7, "shard_size": "2MiB"}})
    assert cfg.output.inputs_per_task == 4 and cfg.output.max_clips_per_shard == 7
    assert cfg.output.shard_bytes == 2 * 2**20
    default = BuildConfig().output
    assert default.inputs_per_task == 16 and default.shard_bytes == 512_000_000 and default.max_clips_per_shard is None
    with pytest.raises(ValueError, match="inputs_per_task"):
        BuildConfig.from_dict({"output": {"inputs_per_task": 0}})
    with pytest.raises(ValueError, match="output.shard_size"):
        BuildConfig.from_dict({"output": {"shard_size": "big"}})


@pytest.fixture
def tiny_inputs(tmp_path, canvas):
    from avf_data.demo import write_av

    src = tmp_path / "in"
    src.mkdir()
    paths = []
    for i, name in enumerate("abcd"):
        frames = np.repeat(canvas((96, 96), head=50)[None], 8 + i, axis=0)
        tone = (0.2 * np.sin(np.arange(640 * (8 + i)) / 16000 * 2 * np.pi * 200)).astype(np.float32)
        write_av(src / f"{name}.mp4", frames, tone)
        paths.append(str(src / f"{name}.mp4"))
    return paths


def _keys(out):
    from avf_data.shards import expand_shards, iter_raw_samples

    return [s["__key__"] for s in iter_raw_samples(expand_shards(out / "shards"))]


def test_reruns_add_shards_and_leave_sealed_ones_alone(tiny_inputs, tmp_path):
    from avf_data.build import build

    a, b, c, d = tiny_inputs
    out = tmp_path / "out"
    cfg = BuildConfig(curate=False)
    cfg.output.inputs_per_task = 2
    cfg.output.thumbnails = False

    stats = build([a, b], out, cfg, workers=0, progress=False)
    assert stats["run"]["tasks"] == 1 and stats["clips"] == 2 and stats["run"]["shards_sealed"] == 1
    man = read_jsonl(out / "manifest.jsonl")
    assert [r["shard"] for r in man] == ["shards/shard-000000.tar"] * 2  # two inputs, one shard
    with tarfile.open(out / "shards" / "shard-000000.tar") as tar:
        assert [m.name.split(".")[0] for m in tar][::3] == [r["key"] for r in man]
    first = out / "shards" / "shard-000000.tar"
    before = (first.read_bytes(), first.stat().st_mtime_ns)

    # rerun with more inputs: a, b are done; c, d are curated and go to a new shard (the run
    # before sealed its last shard, so that readers saw every clip)
    stats = build([a, b, c, d], out, cfg, workers=0, progress=False)
    assert stats["run"]["inputs_skipped_resume"] == 2 and stats["run"]["inputs_processed"] == 2
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before  # untouched
    keys = _keys(out)
    assert len(keys) == 4 == len(set(keys))
    assert keys == [r["key"] for r in read_jsonl(out / "manifest.jsonl")]  # manifest in shard order
    assert stats["shards"]["pattern"] == "shards/shard-{000000..000001}.tar"

    # a finished folder: nothing redone, nothing rewritten
    manifest = (out / "manifest.jsonl").read_bytes()
    stats = build([a, b, c, d], out, cfg, workers=0, progress=False)
    assert stats["run"]["inputs_processed"] == 0 and stats["run"]["shards_sealed"] == 0
    assert (out / "manifest.jsonl").read_bytes() == manifest
    assert len(task_lines(out)) == 2  # one commit line per task


def test_shard_size_and_clip_limit_split_a_task(tiny_inputs, tmp_path):
    """One task's clips are split over shards where the size (or clip) limit falls."""
    from avf_data.build import build
    from avf_data.tars import read_local_index

    cfg = BuildConfig(curate=False)
    cfg.output.thumbnails = False
    cfg.output.shard_size = 1  # every clip alone
    stats = build(tiny_inputs, tmp_path / "bytes", cfg, workers=0, progress=False)
    assert stats["run"]["tasks"] == 1 and stats["shards"]["count"] == 4
    cfg.output.shard_size = "1GB"
    cfg.output.max_clips_per_shard = 3
    stats = build(tiny_inputs, tmp_path / "clips", cfg, workers=0, progress=False)
    counts = [read_local_index(p).samples for p in sorted((tmp_path / "clips" / "shards").glob("*.tar"))]
    assert counts == [3, 1]


def test_process_task_writes_one_segment(tiny_inputs, tmp_path):
    """A task's clips go to one segment; a task failing half-way leaves no shard behind (its
    segment has no log line, so the next run deletes it)."""
    from avf_data import pipeline
    from avf_data.build import build

    cfg = BuildConfig(curate=False)
    cfg.output.thumbnails = False
    out = tmp_path / "out"
    calls = []

    def hook(path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")

    with pytest.raises(OSError):
        pipeline.process_task([(p, None) for p in tiny_inputs], out, cfg, before_input=hook)
    assert not list((out / "shards").glob("*"))
    res = pipeline.process_task([(p, None) for p in tiny_inputs[:2]], out, cfg, tid="0123456789abcdef", seq=5)
    assert res["task_id"] == "0123456789abcdef" and res["seq"] == 5 and res["n"] == 2
    seg = res["segment"]
    assert seg["name"] == "segments/0123456789abcdef.tar" and seg["samples"] == 2 and len(seg["offsets"]) == 2
    assert [r["key"] for rec in res["inputs"] for r in rec["manifest"]] == [
        s["__key__"] for s in __import__("avf_data.shards", fromlist=["x"]).iter_raw_samples([str(out / seg["name"])])
    ]
    stats = build(tiny_inputs, out, cfg, workers=0, progress=False)
    assert not list((out / "segments").iterdir())  # stray segments gone, packed ones too
    assert stats["run"]["orphan_shards_removed"] >= 1 and stats["clips"] == 4


def test_orphan_shards_are_removed_at_start_up(tiny_inputs, tmp_path):
    """What a kill between a shard's rename and its seal line leaves, planted directly (no kill
    whose timing decides what is there): shard files past what build.jsonl commits, and a
    segment no task line names. The next run removes exactly those, counts them and keeps
    every clip once."""
    import json

    from avf_data.build import build

    cfg = BuildConfig(curate=False)
    cfg.output.thumbnails = False
    out = tmp_path / "out"
    build(tiny_inputs[:2], out, cfg, workers=0, progress=False)
    state = json.loads((out / "state.json").read_text())
    orphans = [
        out / "shards" / f"shard-{state['next_shard'] + 1:06d}.tar",
        out / "shards" / f"shard-{state['next_shard'] + 1:06d}.idx.json",
        out / "segments" / "00000000deadbeef.tar",
    ]
    for p in orphans:
        p.write_bytes(b"orphan")
    stats = build(tiny_inputs, out, cfg, workers=0, progress=False)
    assert stats["run"]["orphan_shards_removed"] == len(orphans)
    assert not any(p.exists() and p.read_bytes() == b"orphan" for p in orphans)
    assert sorted(_keys(out)) == sorted(set(_keys(out))) and stats["clips"] == 4
