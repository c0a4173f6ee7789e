"""Task grouping: several inputs share shards, shard names are stable, orphans are removed."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest


def read_jsonl(path) -> list[dict]:
    import json as _json
    from pathlib import Path as _Path

    return [_json.loads(x) for x in _Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def test_group_tasks_is_deterministic():
    from avf_data.build import group_tasks
    from avf_data.pipeline import input_id, task_id

    items = [(f"/data/v{i:02d}.mp4", None) for i in range(40)]
    tasks = group_tasks(items, 16, workers=2)
    assert [len(t[1]) for t in tasks] == [16, 16, 8]
    assert [p for t in tasks for p, _ in t[1]] == [p for p, _ in items]  # order kept, nothing lost
    assert tasks == group_tasks(list(items), 16, workers=2)
    assert tasks[0][0] == task_id([input_id(p) for p, _ in reversed(items[:16])])  # sorted ids
    assert len({t[0] for t in tasks}) == 3
    # small runs: every worker gets a task; one worker: as many inputs per task as allowed
    assert [len(t[1]) for t in group_tasks(items[:7], 16, workers=2)] == [4, 3]
    assert [len(t[1]) for t in group_tasks(items[:7], 3, workers=1)] == [3, 3, 1]
    assert group_tasks([], 16, 4) == []


def test_config_fields_and_old_name():
    from avf_data.config import BuildConfig

    cfg = BuildConfig.from_dict({"output": {"inputs_per_task": 4, "shard_max_count": 7}})
    assert cfg.output.inputs_per_task == 4 and cfg.output.max_clips_per_shard == 7
    assert BuildConfig().output.inputs_per_task == 16
    with pytest.raises(ValueError, match="inputs_per_task"):
        BuildConfig.from_dict({"output": {"inputs_per_task": 0}})


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


def test_inputs_share_shards_and_names_are_stable(tiny_inputs, tmp_path):
    from avf_data.build import build
    from avf_data.config import BuildConfig
    from avf_data.pipeline import input_id, task_id

    a, b, c, d = tiny_inputs
    out = tmp_path / "out"
    cfg = BuildConfig(curate=False)
    cfg.output.inputs_per_task = 2
    cfg.output.thumbnails = False

    stats = build([a, b], out, cfg, workers=0, progress=False)
    assert stats["run"]["tasks"] == 1 and stats["clips"] == 2
    first = f"shards/{task_id([input_id(b), input_id(a)])}-000000.tar"
    man = read_jsonl(out / "manifest.jsonl")
    assert {r["shard"] for r in man} == {first}  # two inputs, one shard
    with tarfile.open(out / first) as tar:
        assert {m.name.split(".")[0] for m in tar} == {r["key"] for r in man}
    assert len((out / "done.jsonl").read_text().splitlines()) == 1  # one commit line per task
    before = ((out / first).read_bytes(), (out / first).stat().st_mtime_ns)

    # rerun with more inputs: a, b are done; c, d form a new task with new shard names
    cfg.output.max_clips_per_shard = 1  # roll over within the task
    stats = build([a, b, c, d], out, cfg, workers=0, progress=False)
    assert stats["run"]["inputs_skipped_resume"] == 2 and stats["run"]["inputs_processed"] == 2
    second = task_id([input_id(c), input_id(d)])
    names = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert names == sorted([first.split("/")[1], f"{second}-000000.tar", f"{second}-000001.tar"])
    assert ((out / first).read_bytes(), (out / first).stat().st_mtime_ns) == before  # untouched
    keys = _keys(out)
    assert len(keys) == 4 == len(set(keys))
    assert sorted(keys) == sorted(r["key"] for r in read_jsonl(out / "manifest.jsonl"))

    # a finished folder: nothing redone, same shard names
    stats = build([a, b, c, d], out, cfg, workers=0, progress=False)
    assert stats["run"]["inputs_processed"] == 0
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == names

    # The driver died after the task's shards were renamed but before its done-log line was
    # (completely) written: the rerun must drop those orphan shards and redo c, d (now in
    # other tasks), without duplicate keys.
    log = out / "done.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # torn last line
    cfg.output.inputs_per_task = 1
    stats = build([a, b, c, d], out, cfg, workers=0, progress=False)
    assert stats["run"]["orphan_shards_removed"] == 2 and stats["run"]["inputs_processed"] == 2
    assert stats["run"]["tasks"] == 2
    assert not list((out / "shards").glob(f"{second}-*"))
    assert (out / "shards" / f"{task_id([input_id(c)])}-000000.tar").exists()
    keys = _keys(out)
    assert len(keys) == 4 == len(set(keys))
    man = read_jsonl(out / "manifest.jsonl")
    assert sorted(keys) == sorted(r["key"] for r in man)
    assert all((out / r["shard"]).exists() for r in man)
    done = [json.loads(x) for x in log.read_text().splitlines()]
    assert sorted(i["source"] for t in done for i in t["inputs"]) == sorted(tiny_inputs)


def test_process_task_keeps_shards_hidden_until_done(tiny_inputs, tmp_path, monkeypatch):
    """A task failing half-way leaves no shard behind (not even a renamed full one)."""
    from avf_data import pipeline
    from avf_data.config import BuildConfig

    cfg = BuildConfig(curate=False)
    cfg.output.max_clips_per_shard = 1
    cfg.output.thumbnails = False
    out = tmp_path / "out"
    calls = []

    def hook(path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")

    with pytest.raises(OSError):
        pipeline.process_task([(p, None) for p in tiny_inputs], out, cfg, before_input=hook)
    assert not list((out / "shards").iterdir())
    res = pipeline.process_task([(p, None) for p in tiny_inputs[:2]], out, cfg)
    assert len(res["inputs"]) == 2 and len(res["shards"]) == 2
    assert [r["shards"] for r in res["inputs"]] == [[s] for s in res["shards"]]
    assert all(r["task_id"] == res["task_id"] for r in res["inputs"])
