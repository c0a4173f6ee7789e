"""The acceptance command (``avf-data build --demo``) and input discovery."""

from __future__ import annotations

import json
import os

import pytest


@pytest.mark.slow
def test_build_demo_cli(demo_inputs, tmp_path, monkeypatch, capsys):
    import avf_data.demo
    from avf_data.cli import main

    seen = {}

    def fake_make_demo_inputs(folder):  # the session already made them; same files
        seen["folder"] = folder
        return demo_inputs

    monkeypatch.setattr(avf_data.demo, "make_demo_inputs", fake_make_demo_inputs)
    out = tmp_path / "demo-out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("crop:\n  out_size: 96\n")
    assert main(["build", "--demo", "--out", str(out), "--workers", "2", "--config", str(cfg)]) == 0
    assert seen["folder"] == out / "demo-inputs"
    captured = capsys.readouterr()
    text = captured.out
    assert "6 clips" in text and "fallback_motion_envelope" in text and "top rejects: " in text
    # without SyncNet weights sync is measured, not enforced, and every run says so
    assert captured.err.count("NOT enforced") == 2
    for name in ("manifest.jsonl", "rejects.jsonl", "stats.json", "report.md", "contact_sheet.png"):
        assert (out / name).exists()
    from avf_data.shards import iter_clips

    assert {c.frames.shape[1:] for c in iter_clips(out / "shards")} == {(96, 96, 3)}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["run"]["workers"] == 2 and stats["clips"] == 6 and stats["sync_enforced"] is False
    # the CPU of every process (workers and their fork server too, which `time` does not see)
    cpu = stats["run"]["cpu_seconds_all_processes"]
    assert cpu["worker_start_up"] > 0 and cpu["workers"] >= cpu["inputs"] > 0
    assert cpu["total"] == pytest.approx(cpu["driver"] + cpu["worker_start_up"] + cpu["workers"], abs=0.01)
    assert f"CPU: {cpu['total']:.1f} s in all processes" in text


def test_resolve_inputs(tmp_path):
    from avf_data.inputs import resolve_inputs

    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("a/x.mp4", "a/b/y.MOV", "a/readme.md", "a/.hidden.mp4", "z.mkv"):
        (tmp_path / rel).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nz.mkv\n\na/x.mp4\n/abs/missing.mp4\n")
    got = resolve_inputs([str(tmp_path / "a"), str(listing), str(tmp_path / "z.mkv")])
    rel = [os.path.relpath(p, tmp_path) if not p.startswith("/abs") else p for p in got]
    assert rel == ["a/b/y.MOV", "a/x.mp4", "z.mkv", "/abs/missing.mp4"]  # recursive, deduplicated
