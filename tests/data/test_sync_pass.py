"""``avf-data sync DIR``: SyncNet over a finished build, resumable, accounting kept.

The corpus: three ~2 s talking-face videos cut from the demo's single_face clip, built
(without weights) into one shard each, then sync-checked with random SyncNet weights in
the official format (see syncnet_fixtures).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from build_logs import assert_ray_address_refused
from syncnet_fixtures import write_weights

from avf_data.shards import iter_raw_samples

KEEP_ALL = "sync: {max_offset_frames: 15, min_confidence_syncnet: -1.0}\n"


def read_jsonl(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def corpus(demo_inputs, tmp_path_factory):
    """A finished build of three short inputs (one shard each) and the weights file."""
    import av

    from avf_data.build import build
    from avf_data.config import load_config
    from avf_data.demo import write_av

    root = tmp_path_factory.mktemp("sync-corpus")
    with av.open(str(demo_inputs["single_face"])) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
    with av.open(str(demo_inputs["single_face"])) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=16000)
        audio = np.concatenate(
            [o.to_ndarray().reshape(-1) for f in c.decode(c.streams.audio[0]) for o in rs.resample(f)]
        )
    inputs = []
    for i, (a, b) in enumerate([(5, 57), (60, 112), (115, 167)]):
        inputs.append(str(write_av(root / "src" / f"clip{i}.mp4", frames[a:b], audio[a * 640 : b * 640])))
    cfg_file = root / "tasks.yaml"
    cfg_file.write_text("output: {inputs_per_task: 1, shard_size: 1}\n")  # a shard per clip
    out = root / "built"
    stats = build(inputs, out, load_config(cfg_file), workers=0, progress=False)
    assert stats["clips"] >= 3, stats
    return {"out": out, "inputs": inputs, "weights": write_weights(root / "syncnet_v2.model"), "root": root}


def _copy(corpus, tmp_path) -> Path:
    dst = tmp_path / "out"
    shutil.copytree(corpus["out"], dst)
    return dst


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("AVF_SYNCNET_WEIGHTS", None)
    return subprocess.run(
        [sys.executable, "-m", "avf_data.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _shard_keys(out: Path) -> list[str]:
    return [s["__key__"] for s in iter_raw_samples(sorted(str(p) for p in (out / "shards").glob("*.tar")))]


def _seconds_by_source(out: Path) -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    for r in read_jsonl(out / "manifest.jsonl") + read_jsonl(out / "rejects.jsonl"):
        acc[r["source"]] += r["seconds"]
    return {k: round(v, 4) for k, v in acc.items()}


def _check_consistent(out: Path, before_seconds: dict[str, float], before_keys: set[str]) -> tuple[list, list]:
    """No clip lost or duplicated; every input second still in a clip or a reject row."""
    manifest = read_jsonl(out / "manifest.jsonl")
    rejects = read_jsonl(out / "rejects.jsonl")
    keys = _shard_keys(out)
    assert len(keys) == len(set(keys)), "duplicate keys in the shards"
    assert set(keys) == {r["key"] for r in manifest}, "shards and manifest disagree"
    sync_rejected = [r for r in rejects if r.get("code", "").startswith("sync.") and r.get("key")]
    assert len({r["key"] for r in sync_rejected}) == len(sync_rejected)
    assert set(keys) | {r["key"] for r in sync_rejected} == before_keys, "a clip was lost"
    assert not set(keys) & {r["key"] for r in sync_rejected}
    assert _seconds_by_source(out) == before_seconds
    for shard in (out / "shards").glob("*.tar"):  # the loaders count samples from the index
        index = json.loads(shard.with_name(shard.name[: -len(".tar")] + ".idx.json").read_text())
        assert index["samples"] == len(list(iter_raw_samples([str(shard)]))), shard.name
    return manifest, sync_rejected


@pytest.mark.slow
def test_sync_pass_end_to_end_cli(corpus, tmp_path):
    out = _copy(corpus, tmp_path)
    before_seconds = _seconds_by_source(out)
    before_keys = set(_shard_keys(out))
    r = _cli("sync", str(out), "--syncnet-weights", str(corpus["weights"]), "--no-progress", "--batch-size", "64")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "clips judged by SyncNet" in r.stdout
    manifest, sync_rejected = _check_consistent(out, before_seconds, before_keys)
    assert len(manifest) + len(sync_rejected) == len(before_keys) >= 3
    for row in sync_rejected:  # random weights: mostly rejected; each with its scores
        assert row["stage"] == "sync" and row["code"] in ("sync.offset", "sync.confidence", "sync.unmeasurable")
        assert row["sync"]["method"] == "syncnet_v2" and len(row["sync"]["mean_dists"]) == 31
        assert row["sync_input"] == "source"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sync_enforced"] is True and stats["sync_scorer"] == "syncnet_v2"
    sp = stats["sync_pass"]
    assert sp["clips_scored"] == len(before_keys) and sp["inputs"] == {"source": len(before_keys)}
    assert sum(v.get("count", 0) for k, v in stats["rejects_by_code"].items() if k.startswith("sync.")) == len(
        sync_rejected
    )
    assert "## Sync pass (SyncNet v2)" in (out / "report.md").read_text()
    assert all(m["sync_enforced"] and m["sync_method"] == "syncnet_v2" for m in manifest)
    assert (out / "build.jsonl").read_bytes() == (corpus["out"] / "build.jsonl").read_bytes()  # never edited
    # a second run has nothing left to score and changes nothing
    shard_bytes = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    r2 = _cli("sync", str(out), "--syncnet-weights", str(corpus["weights"]), "--no-progress")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "0 scored in this run" in r2.stdout
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == shard_bytes
    assert read_jsonl(out / "manifest.jsonl") == manifest
    # other thresholds on a checked folder are refused: rejected clips are gone from the shards
    cfg = tmp_path / "other.yaml"
    cfg.write_text("sync: {min_confidence_syncnet: 1.5}\n")
    r3 = _cli("sync", str(out), "--syncnet-weights", str(corpus["weights"]), "--config", str(cfg), "--no-progress")
    assert r3.returncode == 2 and "avf-data: error:" in r3.stderr and "other settings" in r3.stderr


@pytest.mark.slow
def test_kill_9_and_rerun_loses_and_duplicates_nothing(corpus, tmp_path):
    out = _copy(corpus, tmp_path)
    cfg = tmp_path / "keep.yaml"
    cfg.write_text(KEEP_ALL)  # everything kept: the rewritten shards must still hold every clip
    before_seconds = _seconds_by_source(out)
    before_keys = set(_shard_keys(out))
    n_shards = len(list((out / "shards").glob("*.tar")))
    assert n_shards >= 3
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [
        sys.executable,
        "-m",
        "avf_data.cli",
        "sync",
        str(out),
        "--syncnet-weights",
        str(corpus["weights"]),
        "--config",
        str(cfg),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    log = out / "sync.jsonl"
    deadline = time.time() + 240
    killed = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and log.read_text().count("\n") >= 2:  # header + the first shard committed
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed, proc.stderr.read().decode()[-2000:]
    lines = read_jsonl(log)
    assert 2 <= len(lines) < 1 + n_shards  # killed mid-run
    r = _cli("sync", str(out), "--syncnet-weights", str(corpus["weights"]), "--config", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    manifest, sync_rejected = _check_consistent(out, before_seconds, before_keys)
    assert not sync_rejected and {m["key"] for m in manifest} == before_keys
    assert not list((out / "shards").glob("*.tmp"))
    lines = read_jsonl(log)
    assert len(lines) == 1 + n_shards and len({x["shard"] for x in lines[1:]}) == n_shards
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sync_pass"]["shards_resumed"] >= 1
    for s in iter_raw_samples(sorted(str(p) for p in (out / "shards").glob("*.tar"))):
        meta = json.loads(s["json"])
        assert meta["sync_method"] == "syncnet_v2" and meta["sync_enforced"] is True
        assert meta["sync_estimate"]["method"] != "syncnet_v2"  # the build's estimate is kept beside it
    assert all(m["sync_method"] == "syncnet_v2" and m["sync_input"] == "source" for m in manifest)


def test_crash_between_log_line_and_rename_is_completed(corpus, tmp_path, monkeypatch):
    """The narrowest window: a shard's decisions are logged but the shard not yet replaced."""
    from avf_data import sync_pass

    out = _copy(corpus, tmp_path)
    cfg = tmp_path / "keep.yaml"
    cfg.write_text(KEEP_ALL)
    before_keys = set(_shard_keys(out))
    before_seconds = _seconds_by_source(out)
    real_replace = os.replace

    def dying_replace(src, dst):
        if str(src).endswith(".sync.tmp"):
            raise KeyboardInterrupt("killed after the commit line")
        return real_replace(src, dst)

    monkeypatch.setattr(sync_pass.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        sync_pass.run_sync_pass(out, str(corpus["weights"]), config=cfg, progress=False)
    monkeypatch.setattr(sync_pass.os, "replace", real_replace)
    assert len(read_jsonl(out / "sync.jsonl")) == 2 and list((out / "shards").glob("*.sync.tmp"))
    stats = sync_pass.run_sync_pass(out, str(corpus["weights"]), config=cfg, progress=False)
    assert stats["sync_pass"]["shards_resumed"] == 1
    _check_consistent(out, before_seconds, before_keys)
    assert not list((out / "shards").glob("*.tmp"))


def _rewrite_json(shard: Path, edit) -> None:
    samples = list(iter_raw_samples([str(shard)]))
    with tarfile.open(shard, "w") as tar:
        for s in samples:
            for ext in sorted(k for k in s if not k.startswith("__")):
                data = s[ext]
                if ext == "json":
                    meta = json.loads(data)
                    edit(meta)
                    data = json.dumps(meta, sort_keys=True).encode()
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_samples_without_boxes_or_source_fall_back_to_the_crop(corpus, tmp_path):
    from avf_data import sync_pass

    out = _copy(corpus, tmp_path)
    shards = sorted((out / "shards").glob("*.tar"))
    _rewrite_json(shards[0], lambda m: m.pop("face_boxes"))  # an older build
    _rewrite_json(shards[1], lambda m: m.update(source=str(tmp_path / "gone.mp4")))
    cfg = tmp_path / "keep.yaml"
    cfg.write_text(KEEP_ALL)
    stats = sync_pass.run_sync_pass(out, str(corpus["weights"]), config=cfg, progress=False)
    assert stats["sync_pass"]["inputs"] == {"crop": 2, "source": stats["sync_pass"]["clips_scored"] - 2}
    metas = [json.loads(s["json"]) for s in iter_raw_samples([str(p) for p in shards])]
    notes = sorted(m["sync"]["note"] or "" for m in metas if m["sync_input"] == "crop")
    assert len(notes) == 2
    assert "no face_boxes" in notes[0] + notes[1] and "source file missing" in notes[0] + notes[1]
    assert all("160 px training crop" in n for n in notes)


def test_decode_source_crops_match_in_memory_frames(demo_inputs):
    """Seek + nearest-timestamp decode gives the same frames as decoding everything."""
    import av

    from avf_data.stages.syncnet_input import array_cutter, reference_crops, reference_rects
    from avf_data.sync_pass import decode_source_crops

    with av.open(str(demo_inputs["single_face"])) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
    start, n = 60, 30  # 2.4 s in: the decoder seeks
    boxes = np.tile([250.0, 80.0, 390.0, 260.0], (n, 1)) + np.arange(n)[:, None]
    ours = decode_source_crops(demo_inputs["single_face"], start / 25.0, n, reference_rects(boxes))
    ref = reference_crops(array_cutter(frames[start : start + n]), boxes)
    assert np.array_equal(ours, ref)
    # from the second-to-last frame on: past the end of the stream the last frame is reused
    tail = decode_source_crops(demo_inputs["single_face"], (len(frames) - 2) / 25.0, 5, reference_rects(boxes[:5]))
    expected = reference_crops(array_cutter(np.concatenate([frames[-2:-1], frames[-1:].repeat(4, 0)])), boxes[:5])
    assert np.array_equal(tail, expected)


def test_a_moved_clip_leaves_the_sync_and_quality_counts():
    from avf_data.store.outputs import _sync_reject
    from avf_data.store.stats import StatsAccumulator

    row = {"key": "a_0000", "source": "s", "input_id": "a", "start": 0.0, "end": 2.0, "seconds": 2.0, "shard": "x"}
    rec = {
        "input_id": "a",
        "source": "s",
        "seconds": 4.0,
        "manifest": [row, {"key": "a_0001", "source": "s", "input_id": "a", "start": 2.0, "end": 3.0, "seconds": 1.0}],
        "rejects": [
            {"source": "s", "start": 3.0, "end": 4.0, "seconds": 1.0, "stage": "silence", "code": "silence.silence"}
        ],
        "stages": {
            "sync": {"in": 2, "out": 2, "seconds_in": 3.0, "seconds_out": 3.0},
            "quality": {"in": 2, "out": 2, "seconds_in": 3.0, "seconds_out": 3.0},
        },
        "sync_methods": ["fallback_motion_envelope"],
        "sync_enforced": False,
    }
    acc = StatsAccumulator()
    acc.add_record(rec)
    d = {
        "sync": {"method": "syncnet_v2", "offset_frames": 9, "confidence": 5.0},
        "code": "sync.offset",
        "reason": "av offset +9",
        "input": "source",
    }
    reject = _sync_reject(row, d)
    assert reject["stage"] == "sync" and reject["code"] == "sync.offset" and reject["key"] == "a_0000"
    assert reject["seconds"] == 2.0 and reject["sync"]["offset_frames"] == 9 and reject["sync_input"] == "source"
    acc.move_to_rejects(row, reject)
    acc.judged_by_syncnet()
    st = acc.result()
    assert st["clips"] == 1 and st["seconds_accepted"] == 1.0 and st["seconds_rejected"] == 3.0
    assert st["stages"]["sync"] == {"in": 2, "out": 1, "seconds_in": 3.0, "seconds_out": 1.0}
    assert st["stages"]["quality"] == {"in": 1, "out": 1, "seconds_in": 1.0, "seconds_out": 1.0}
    assert st["rejects_by_code"]["sync.offset"] == {"count": 1, "seconds": 2.0}
    assert st["sync_methods"] == {"syncnet_v2": 1} and st["sync_enforced"] is True


def test_sync_cli_errors_are_usage_errors(corpus, tmp_path):
    out = _copy(corpus, tmp_path)
    r = _cli("sync", str(out), "--no-progress")
    assert r.returncode == 2 and "needs SyncNet weights" in r.stderr and "download_model.sh" in r.stderr
    bad = tmp_path / "sfd_face.pth"
    import torch

    torch.save({"conv1_1.weight": torch.zeros(64, 3, 3, 3)}, bad)
    r = _cli("sync", str(out), "--syncnet-weights", str(bad), "--no-progress")
    assert r.returncode == 2 and "S3FD face detector" in r.stderr
    r = _cli("sync", str(tmp_path), "--syncnet-weights", str(corpus["weights"]), "--no-progress")
    assert r.returncode == 2 and "not an avf-data build" in r.stderr
    assert not (out / "sync.jsonl").exists()


def _plant_member(shard: Path, kind: str) -> str:
    """Rewrite ``shard`` with its first sample's wav as a ``kind`` member (symlink, hard link,
    character device) instead of a file, as a hand-made or hostile tar may hold; returns its name."""
    samples = list(iter_raw_samples([str(shard)]))
    types = {"symlink": tarfile.SYMTYPE, "hard link": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}
    planted = f"{samples[0]['__key__']}.wav"
    with tarfile.open(shard, "w") as tar:
        for s in samples:
            for ext in sorted(k for k in s if not k.startswith("__")):
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                if info.name == planted:
                    info.type, info.linkname = types[kind], "/etc/passwd"
                    tar.addfile(info)
                else:
                    info.size = len(s[ext])
                    tar.addfile(info, io.BytesIO(s[ext]))
    return planted


@pytest.mark.parametrize(
    "kind",
    ["symlink", pytest.param("hard link", marks=pytest.mark.slow), pytest.param("device", marks=pytest.mark.slow)],
)
def test_link_and_device_members_refuse_the_shard_in_one_line(corpus, tmp_path, kind):
    """A shard with a link or device member (it used to crash the pass with KeyError: 'flac'):
    one line naming the shard and the member, exit 2; the shards before it stay committed."""
    out = _copy(corpus, tmp_path)
    shard = sorted((out / "shards").glob("*.tar"))[-1]
    planted = _plant_member(shard, kind)
    r = _cli("sync", str(out), "--syncnet-weights", str(corpus["weights"]), "--no-progress", timeout=180)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert str(shard) in lines[0] and repr(planted) in lines[0] and "not a regular file" in lines[0], lines
    n_shards = len(list((out / "shards").glob("*.tar")))
    assert len(read_jsonl(out / "sync.jsonl")) == n_shards  # the header, and every shard before the last


def _bad_weights(kind: str, path: Path) -> Path:
    """A --syncnet-weights file that is not the weights, made on the spot."""
    import pickle

    import torch

    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "raw pickle":  # never unpickled: weights_only refuses it
        path.write_bytes(pickle.dumps({"netcnnaud.0.weight": [0.0] * 9}))
    elif kind == "wrong keys":
        torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("random bytes", "not a torch.save'd state dict"),
        ("raw pickle", "plain pickle"),
        ("wrong keys", "do not match the official syncnet_v2 layout"),
    ],
)
def test_bad_syncnet_weights_are_one_line(corpus, tmp_path, kind, words):
    """A file that is not SyncNet's weights: one line naming it and why, exit 2, nothing written."""
    out = _copy(corpus, tmp_path)
    bad = _bad_weights(kind, tmp_path / "syncnet_v2.model")
    r = _cli("sync", str(out), "--syncnet-weights", str(bad), "--no-progress", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("avf-data: error:") and str(bad) in lines[0] and words in lines[0], lines
    assert not (out / "sync.jsonl").exists()


def test_unreachable_ray_address_fails_fast(corpus, tmp_path):
    """`sync --engine ray` to a port where nothing answers: one line, exit 2, in under 10 s,
    before SyncNet loads or the pass writes anything."""
    out = _copy(corpus, tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    r = _cli(
        "sync", str(out), "--syncnet-weights", str(corpus["weights"]), "--engine", "ray",
        "--ray-address", f"127.0.0.1:{port}", "--no-progress", timeout=60,
    )  # fmt: skip
    took = time.perf_counter() - t0
    assert_ray_address_refused(r, took)
    assert not (out / "sync.jsonl").exists()


@pytest.mark.slow
def test_ray_actor_pool_gives_the_local_results(corpus, tmp_path):
    """--engine ray: scorer actors (CPU here; one per GPU with --device cuda) score the shards,
    the driver commits them; same decisions and scores as the local engine."""
    from avf_data import sync_pass

    cfg = tmp_path / "keep.yaml"
    cfg.write_text(KEEP_ALL)
    local_out = _copy(corpus, tmp_path / "local")
    ray_out = _copy(corpus, tmp_path / "ray")
    before_keys = set(_shard_keys(ray_out))
    before_seconds = _seconds_by_source(ray_out)
    sync_pass.run_sync_pass(local_out, str(corpus["weights"]), config=cfg, progress=False)
    stats = sync_pass.run_sync_pass(
        ray_out, str(corpus["weights"]), config=cfg, engine="ray", workers=2, progress=False
    )
    assert stats["sync_pass"]["engine"] == "ray" and stats["sync_pass"]["clips_scored"] == len(before_keys)
    _check_consistent(ray_out, before_seconds, before_keys)

    def clips(out):
        return {k: v for p in sorted((out / "sync").glob("*.json")) for k, v in json.loads(p.read_text()).items()}

    a, b = clips(local_out), clips(ray_out)
    assert a.keys() == b.keys() == before_keys
    for k in a:
        assert a[k]["code"] == b[k]["code"] and a[k]["sync"]["offset_frames"] == b[k]["sync"]["offset_frames"]
        np.testing.assert_allclose(a[k]["sync"]["mean_dists"], b[k]["sync"]["mean_dists"], atol=1e-3)
