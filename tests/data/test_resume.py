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
from build_logs import input_records
from lifetime_helpers import live_group_members, seconds_until_gone

from avf_data.shards import iter_raw_samples


def read_jsonl(path) -> list[dict]:
    import json as _json
    from pathlib import Path as _Path

    return [_json.loads(x) for x in _Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.mark.slow
def test_kill_and_resume(demo_build, tmp_path, cpu_load):
    names = ["single_face", "scene_cut", "long_silence", "two_faces", "shifted_audio"]
    inputs = [str(demo_build["inputs"][n]) for n in names]
    out = tmp_path / "out"
    cfg_file = tmp_path / "tasks.yaml"
    # tasks of 2 inputs: [sf, sc] [ls, tf] [sa]; shards of ~two clips, so some are sealed mid-run
    cfg_file.write_text("output: {inputs_per_task: 2, shard_size: 450KB}\n")
    cmd = [
        sys.executable,
        "-m",
        "avf_data.cli",
        "build",
        *inputs,
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-progress",
        "--config",
        str(cfg_file),
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "build.jsonl"
    deadline = time.time() + 240
    killed_mid_run = False
    took, leftovers = 0.0, []
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and log.read_text().count('"kind":"task"') >= 1:
                with cpu_load():  # the driver only, not reaped yet: its workers must notice and exit
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_mid_run = True
                    took, leftovers = seconds_until_gone(proc.pid, limit=2.0)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and not killed_mid_run:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if live_group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed_mid_run, proc.stderr.read().decode()[-2000:]
    assert not leftovers, f"worker processes outlived the killed driver by {took:.1f} s: {leftovers}"
    from avf_data.build import build
    from avf_data.config import load_config

    done = list(input_records(out))
    n_done = len(done)
    assert 2 <= n_done < len(inputs)  # whole tasks only
    # what a crash leaves besides: a worker's segment that was never committed, and appends to
    # the shard being filled that no pack line backs
    # (found from the files: state.json is a checkpoint and may lag behind the log)
    (out / "segments" / "00000000deadbeef.tar").write_bytes(b"partial")
    for part in (out / "shards").glob("*.tar.part"):
        with open(part, "ab") as fh:
            fh.write(b"\0" * 4096)
    # and a shard renamed past what the log commits (planted: whether the kill left one is chance)
    numbers = [int(p.name[len("shard-") :][:6]) for p in (out / "shards").glob("shard-*.tar*")]
    (out / "shards" / f"shard-{max(numbers, default=-1) + 1:06d}.tar").write_bytes(b"orphan")

    cfg = load_config(cfg_file)
    stats = build(inputs, out, cfg, workers=1, progress=False)
    assert stats["run"]["inputs_skipped_resume"] == n_done
    assert stats["run"]["inputs_processed"] == len(inputs) - n_done
    assert stats["run"]["orphan_shards_removed"] >= 2  # the planted segment and shard, at least
    assert not list((out / "segments").iterdir()) and not list((out / "shards").glob("*.part"))

    manifest = read_jsonl(out / "manifest.jsonl")
    shards = sorted((out / "shards").glob("*.tar"))
    keys = [s["__key__"] for s in iter_raw_samples([str(p) for p in shards])]
    assert len(keys) == len(set(keys)), "duplicate keys in shards"
    assert keys == [r["key"] for r in manifest]  # the manifest is in shard order
    assert {r["shard"] for r in manifest} == {p.relative_to(out).as_posix() for p in shards}
    assert [p.name for p in shards] == [f"shard-{i:06d}.tar" for i in range(len(shards))] and len(shards) >= 2
    for p in shards[:-1]:  # sealed when the next clip would not fit
        assert p.stat().st_size <= cfg.output.shard_bytes + 10240 or len(list(iter_raw_samples([str(p)]))) == 1
    assert sorted(r["source"] for r in input_records(out)) == sorted(inputs)
    # the same clips, in input order, as an uninterrupted build of these inputs: nothing missing
    expected = [r for r in demo_build["manifest"] if Path(r["source"]).stem in names]
    expected.sort(key=lambda r: (names.index(Path(r["source"]).stem), r["clip_index"]))
    assert keys == [r["key"] for r in expected]


@pytest.mark.slow
def test_worker_crash_is_retried_then_rejected(demo_build, tmp_path):
    """A worker process that dies (segfault, OOM kill) does not stop the run, and does not
    take the other inputs of its task down with it: the task is retried, then split."""
    inputs = [str(demo_build["inputs"][n]) for n in ("no_face", "two_faces", "single_face")]
    out = tmp_path / "out"
    cfg_file = tmp_path / "tasks.yaml"
    cfg_file.write_text("output: {inputs_per_task: 2}\n")  # tasks: [no_face, two_faces] [single_face]
    # Every process of the build (driver, fork server, workers) imports this sitecustomize, which
    # makes the worker die like a segfault on one input; production code has no hook for it.
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "import avf_data.pipeline as p\n"
        "_real = p.curate_input\n"
        "def _crashing(path, *a, **k):\n"
        "    if os.path.basename(path) == 'no_face.mp4':\n"
        "        os._exit(70)\n"
        "    return _real(path, *a, **k)\n"
        "p.curate_input = _crashing\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "avf_data.cli",
            "build",
            *inputs,
            "--out",
            str(out),
            "--workers",
            "2",
            "--no-progress",
            "--config",
            str(cfg_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rejects = read_jsonl(out / "rejects.jsonl")
    crashed = [x for x in rejects if x["stage"] == "error"]
    assert len(crashed) == 1 and "no_face" in crashed[0]["source"] and crashed[0]["code"] == "error.crash"
    assert any(x["code"] == "face.several" and "two_faces" in x["source"] for x in rejects)
    manifest = read_jsonl(out / "manifest.jsonl")
    assert [Path(x["source"]).stem for x in manifest] == ["single_face"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["inputs"] == 3 and stats["run"]["inputs_processed"] == 3
    # nothing of the abandoned two-input task is left behind
    assert not list((out / "segments").iterdir())
    assert {p.relative_to(out).as_posix() for p in (out / "shards").glob("*.tar*")} == {r["shard"] for r in manifest}
