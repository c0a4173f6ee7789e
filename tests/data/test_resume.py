"""Kill -9 in the middle of a build, rerun, and check nothing is duplicated or missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avf_data.shards import expand_shards, iter_raw_samples


def read_jsonl(path) -> list[dict]:
    import json as _json
    from pathlib import Path as _Path

    return [_json.loads(x) for x in _Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def _live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are not zombies (Linux /proc)."""
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(entry))
    return live


@pytest.mark.slow
def test_kill_and_resume(demo_build, tmp_path):
    names = ["single_face", "scene_cut", "long_silence", "two_faces", "shifted_audio"]
    inputs = [str(demo_build["inputs"][n]) for n in names]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "avf_data.cli", "build", *inputs, "--out", str(out), "--workers", "1",
           "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_log = out / "done.jsonl"
    deadline = time.time() + 240
    killed_mid_run = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if done_log.exists() and done_log.read_text().count("\n") >= 1:
                os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers must notice and exit
                killed_mid_run = True
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and not killed_mid_run:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_mid_run, proc.stderr.read().decode()[-2000:]
    # orphaned workers notice the driver's death and exit within about a second
    leftovers = _live_group_members(proc.pid)
    until = time.time() + 10
    while leftovers and time.time() < until:
        time.sleep(0.2)
        leftovers = _live_group_members(proc.pid)
    if leftovers:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not leftovers, f"worker processes outlived the killed driver: {leftovers}"
    n_done = done_log.read_text().count("\n")
    assert 1 <= n_done < len(inputs)
    # a half-written shard as a crash would leave it
    (out / "shards" / "deadbeef-000000.tar.tmp").write_bytes(b"partial")

    from avf_data.build import build

    stats = build(inputs, out, workers=1, progress=False)
    assert stats["run"]["inputs_skipped_resume"] == n_done
    assert stats["run"]["inputs_processed"] == len(inputs) - n_done
    assert not list((out / "shards").glob("*.tmp"))

    manifest = read_jsonl(out / "manifest.jsonl")
    keys = [s["__key__"] for s in iter_raw_samples(expand_shards(out / "shards"))]
    assert len(keys) == len(set(keys)), "duplicate keys in shards"
    assert sorted(keys) == sorted(r["key"] for r in manifest)
    done = [json.loads(x) for x in done_log.read_text().splitlines()]
    assert sorted(r["source"] for r in done) == sorted(inputs)
    # same keys as the uninterrupted demo build for these inputs: nothing missing
    expected = sorted(r["key"] for r in demo_build["manifest"] if Path(r["source"]).stem in names)
    assert sorted(keys) == expected


@pytest.mark.slow
def test_worker_crash_is_retried_then_rejected(demo_build, tmp_path):
    """A worker process that dies (segfault, OOM kill) does not stop the run."""
    inputs = [str(demo_build["inputs"][n]) for n in ("two_faces", "no_face")]
    out = tmp_path / "out"
    env = dict(os.environ, AVF_DATA_TEST_CRASH_ON="no_face.mp4")
    r = subprocess.run([sys.executable, "-m", "avf_data.cli", "build", *inputs, "--out", str(out), "--workers", "2",
                        "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rejects = read_jsonl(out / "rejects.jsonl")
    crashed = [x for x in rejects if x["stage"] == "error"]
    assert len(crashed) == 1 and "no_face" in crashed[0]["source"] and "crashed" in crashed[0]["reason"]
    assert any(x["stage"] == "face" and "two_faces" in x["source"] for x in rejects)
