"""The Ray engine produces the same outputs as the local process pool."""

from __future__ import annotations

from pathlib import Path

import pytest


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
