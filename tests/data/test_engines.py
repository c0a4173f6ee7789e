"""The Ray engine produces the same outputs as the local process pool; the pool's workers end
with their driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def read_jsonl(path) -> list[dict]:
    import json as _json
    from pathlib import Path as _Path

    return [_json.loads(x) for x in _Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


def _strip(rows):
    return sorted(tuple(sorted((k, repr(v)) for k, v in r.items())) for r in rows)


@pytest.mark.slow
def test_ray_engine_matches_local(demo_build, tmp_path):
    ray = pytest.importorskip("ray")
    from avf_data.build import build

    # the same inputs in the same order and the same worker count as demo_build (local
    # engine), hence the same tasks: same shard names, keys and rows
    names = list(demo_build["inputs"])
    inputs = [str(p) for p in demo_build["inputs"].values()]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stats = build(inputs, tmp_path / "ray", engine="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    assert stats["run"]["engine"] == "ray"
    man = read_jsonl(tmp_path / "ray" / "manifest.jsonl")
    rej = read_jsonl(tmp_path / "ray" / "rejects.jsonl")
    local_man = [r for r in demo_build["manifest"] if Path(r["source"]).stem in names]
    local_rej = [r for r in demo_build["rejects"] if Path(r["source"]).stem in names]
    assert [r["key"] for r in man] and sorted(r["key"] for r in man) == sorted(r["key"] for r in local_man)
    assert _strip(man) == _strip(local_man)
    assert _strip(rej) == _strip(local_rej)
    assert sorted(p.name for p in (tmp_path / "ray" / "shards").glob("*.tar")) == sorted(
        p.name for p in (demo_build["out"] / "shards").glob("*.tar")
    )
    assert stats["run"]["tasks"] == demo_build["stats"]["run"]["tasks"] == 2
    assert len({r["shard"] for r in man}) < len({r["source"] for r in man})  # inputs share shards


def test_default_workers_fit_cores_and_available_memory(monkeypatch):
    """One worker per core, fewer when MemAvailable (page cache included) cannot hold 1.5 GB each."""
    from avf_data import engines

    cores = len(__import__("os").sched_getaffinity(0))
    monkeypatch.setattr(engines, "available_memory", lambda: 64_000_000_000)
    assert engines.default_workers() == cores
    monkeypatch.setattr(engines, "available_memory", lambda: 2_600_000_000)
    assert engines.default_workers() == 1
    monkeypatch.undo()
    assert engines.available_memory() > 0  # the real one reads /proc/meminfo


DRIVER = """
import sys
from avf_data.engines import WorkerSpec, run_local
from lifetime_helpers import Spinner
for result in run_local(iter(range(4)), WorkerSpec(Spinner, (sys.argv[1],)), workers=2):
    pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_exit_within_2_s_of_a_kill_9_of_the_driver(tmp_path, cpu_load):
    """The local pool's workers (busy, on a loaded machine) and its fork server are gone
    within 2 s of a kill -9 of the driver, which is not even reaped yet (a zombie)."""
    from lifetime_helpers import live_group_members, seconds_until_gone

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        workers = {int(p.stem) for p in tmp_path.glob("*.pid")}
        assert len(workers) == 2 and workers <= set(live_group_members(proc.pid))
        with cpu_load():
            os.kill(proc.pid, signal.SIGKILL)
            took, left = seconds_until_gone(proc.pid, limit=2.0)
        assert not left, f"pool processes outlived the driver by {took:.1f} s: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pid in live_group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
