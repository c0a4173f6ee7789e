"""The output store on its own: packing by bytes in input order, and every crash point repaired.

Tasks here are made by hand (segments of tiny samples written with the one tar writer), so a
crash can be placed exactly: an exception at a chosen write leaves the files as a kill -9
there would (every step is flushed and fsynced before the next one starts).
"""

from __future__ import annotations

import json

import pytest

from avf_data.shards import iter_raw_samples
from avf_data.store.build_store import BuildStore
from avf_data.store.folder import OutputFolder, claim
from avf_data.store.log import JsonLog
from avf_data.tars import SampleTarWriter, read_local_index, read_sample_at


def _sample(key: str) -> dict:
    body = json.dumps({"start": 0.0, "end": 1.0}).encode()
    return {"__key__": key, "json": body, "mp4": key.encode() * 10, "wav": b"w" * 100}


def fake_task(folder: OutputFolder, seq: int, keys: list[str]) -> dict:
    """A finished task as a worker returns it: one input per key, one clip each."""
    tid = f"{seq:016x}"
    path = folder.segment(tid)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        writer = SampleTarWriter(fh)
        for k in keys:
            writer.write(_sample(k))
        writer.finish()
    inputs = [
        {
            "input_id": f"{seq:08x}{i:08x}",
            "source": f"/v/{k}.mp4",
            "seconds": 1.0,
            "frames": 25,
            "manifest": [
                {
                    "key": k,
                    "source": f"/v/{k}.mp4",
                    "input_id": f"{seq:08x}{i:08x}",
                    "start": 0.0,
                    "end": 1.0,
                    "seconds": 1.0,
                    "clip_index": 0,
                    "num_frames": 25,
                }
            ],
            "rejects": [],
            "stages": {},
        }
        for i, k in enumerate(keys)
    ]
    segment = {
        "name": path.relative_to(folder.root).as_posix(),
        "samples": len(keys),
        "offsets": writer.index.offsets,
        "data_bytes": writer.position,
        "members": ["json", "mp4", "wav"],
    }
    return {"task_id": tid, "seq": seq, "n": len(keys), "segment": segment, "inputs": inputs}


def _keys_in_shards(folder: OutputFolder) -> list[list[str]]:
    return [[s["__key__"] for s in iter_raw_samples([str(p)])] for p in sorted(folder.shards.glob("*.tar"))]


TASKS = [(0, ["a0", "a1", "a2"]), (3, ["b0"]), (4, ["c0", "c1", "c2", "c3", "c4"]), (9, ["d0", "d1"])]
SAMPLE = 6 * 512  # three members: a header block and one data block each
TARGET = 3 * SAMPLE + 100  # three samples fit, a fourth does not


def _run(folder: OutputFolder, order, target: int) -> BuildStore:
    store = BuildStore(folder, target)
    store.open()
    results = {seq: fake_task(folder, seq, keys) for seq, keys in TASKS}
    for seq in order:
        store.commit(results[seq])
    store.finish()
    store.close()
    return store


def test_clips_are_packed_by_bytes_in_input_order(tmp_path):
    folder = claim(tmp_path / "out")
    _run(folder, [4, 0, 9, 3], TARGET)  # finished out of order: packed in order anyway
    shards = _keys_in_shards(folder)
    assert [k for s in shards for k in s] == ["a0", "a1", "a2", "b0", "c0", "c1", "c2", "c3", "c4", "d0", "d1"]
    assert [p.name for p in sorted(folder.shards.glob("*.tar"))] == [f"shard-{n:06d}.tar" for n in range(len(shards))]
    for p in sorted(folder.shards.glob("*.tar"))[:-1]:
        index = read_local_index(p)
        assert index.data_bytes == 3 * SAMPLE  # full: a fourth sample would not fit
        assert [read_sample_at(p, index, i)["__key__"] for i in range(index.samples)] == [
            s["__key__"] for s in iter_raw_samples([str(p)])
        ]
    assert not list(folder.segments.iterdir())  # packed segments are gone
    state = json.loads(folder.state.read_text())
    assert state["next_shard"] == len(shards) and not state["backlog"] and not state["open_index"]


def test_one_clip_larger_than_the_target_gets_a_shard_of_its_own(tmp_path):
    folder = claim(tmp_path / "out")
    _run(folder, [0, 3, 4, 9], 100)
    assert _keys_in_shards(folder) == [[k] for _, keys in TASKS for k in keys]


def test_same_tasks_give_the_same_bytes_whatever_the_finishing_order(tmp_path):
    a, b = claim(tmp_path / "a"), claim(tmp_path / "b")
    _run(a, [0, 3, 4, 9], TARGET)
    _run(b, [9, 4, 3, 0], TARGET)
    assert [p.read_bytes() for p in sorted(a.shards.glob("*"))] == [p.read_bytes() for p in sorted(b.shards.glob("*"))]


class Crash(Exception):
    pass


def _crash_on(monkeypatch, cls, name, when):
    """Make ``cls.name`` raise on its ``when``-th call (counting from 1) whose args match."""
    real = getattr(cls, name)
    calls = []

    def wrapper(self, *args, **kwargs):
        if when(*args):
            calls.append(args)
            if len(calls) == 1:
                raise Crash(name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)


@pytest.mark.parametrize(
    "crash",
    [
        "pack line lost",  # bytes copied into the .part, the line that commits them never written
        "seal line lost",  # shard renamed into place, its seal line never written
        "task line torn",  # the driver died while appending a task line
        "state lost",  # no checkpoint to start from: the whole log is replayed
    ],
)
def test_every_crash_point_resumes_to_the_same_shards(tmp_path, monkeypatch, crash):
    clean = claim(tmp_path / "clean")
    _run(clean, [0, 3, 4, 9], TARGET)
    folder = claim(tmp_path / "crashed")
    store = BuildStore(folder, TARGET)
    store.open()
    results = {seq: fake_task(folder, seq, keys) for seq, keys in TASKS}
    tid = {seq: r["task_id"] for seq, r in results.items()}
    when = {
        "pack line lost": lambda rec: rec.get("kind") == "pack" and rec["task_id"] == tid[4],
        "seal line lost": lambda rec: rec.get("kind") == "seal",
        "task line torn": lambda rec: rec.get("kind") == "task" and rec["seq"] == 9,
        "state lost": lambda rec: rec.get("kind") == "pack" and rec["task_id"] == tid[9],
    }[crash]
    with monkeypatch.context() as m:
        _crash_on(m, JsonLog, "append", when)
        with pytest.raises(Crash):
            for seq in [0, 3, 4, 9]:
                store.commit(results[seq])
            store.finish()
    store.close()
    if crash == "task line torn":  # half a line, as a kill during the write leaves it
        with open(folder.build_log, "ab") as fh:
            fh.write(b'{"kind":"task","task_id":"00000000')
    if crash == "state lost":
        folder.state.unlink()
    # the rerun: committed tasks are done, the others are redone (here: handed in again)
    store = BuildStore(folder, TARGET)
    recovery = store.open()
    done = store.done()
    for seq, keys in TASKS:
        if not done.contains(results[seq]["inputs"][0]["input_id"]):
            store.commit(fake_task(folder, seq, keys))
    store.finish()
    store.close()
    assert _keys_in_shards(folder) == _keys_in_shards(clean)
    assert [p.read_bytes() for p in sorted(folder.shards.glob("*"))] == [
        p.read_bytes() for p in sorted(clean.shards.glob("*"))
    ]
    assert not list(folder.segments.iterdir()) and not list(folder.shards.glob("*.part"))
    if crash == "task line torn":
        assert recovery.segments_removed == [f"{9:016x}.tar"]  # no line commits its segment


def test_done_ids_lagging_the_log_are_rederived(tmp_path):
    folder = claim(tmp_path / "out")
    _run(folder, [0, 3, 4, 9], TARGET)
    with open(folder.done_ids, "r+b") as fh:
        fh.truncate(8)  # lost entries: the file is derived, the log is the truth
    store = BuildStore(folder, TARGET)
    store.open()
    done = store.done()
    assert len(done) == 11 and all(done.contains(f"{seq:08x}{i:08x}") for seq, keys in TASKS for i in range(len(keys)))
