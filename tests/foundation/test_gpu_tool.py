"""tools/gpu: the device call's plan, its report and its wheel list, without running a section.

CI also runs the whole script's CPU dry run (``.ci/run``); these checks are the cheap part: the
plan holds every configuration the issue asks for, the report turns records into every table
and verdict, and every carried wheel is pinned by the lock.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

GPU_TOOLS = Path(__file__).resolve().parents[2] / "tools" / "gpu"
NAMES = ("common", "carry", "prepare", "report", "run")


@pytest.fixture
def gpu():
    """The tool's modules (they import each other by bare name), removed again afterwards."""
    import importlib

    before = set(sys.modules)
    sys.path.insert(0, str(GPU_TOOLS))
    try:
        yield {name: importlib.import_module(name) for name in NAMES}
    finally:
        sys.path.remove(str(GPU_TOOLS))
        for name in set(sys.modules) - before:
            if name in NAMES:
                del sys.modules[name]


def test_dry_plan_runs_every_section_small(gpu):
    run = gpu["run"]
    jobs = run.plan(run.parse_args(["--dry-run", "--out", "x"]))
    assert {j.section for j in jobs} == {"env", "attention", "step", "inputs", "syncnet", "loader"}
    assert all((GPU_TOOLS / j.script).is_file() for j in jobs)
    steps = [j for j in jobs if j.section == "step"]
    assert {j.config["model"] for j in steps} == {"avfmae_pp_tiny", "hicmae_base"}
    compiled = [j for j in steps if j.config["compiled"]]  # traced by dynamo, no inductor on CI
    assert len(compiled) == 1 and compiled[0].argv[-2:] == ["--compile-backend", "eager"]


def test_real_plan_has_the_issues_configurations(gpu):
    run = gpu["run"]
    jobs = run.plan(run.parse_args(["--out", "x"]))
    steps = {
        (j.config["model"], j.config["batch"], j.config["compiled"], j.config["attention_backend"])
        for j in jobs
        if j.section == "step"
    }
    for model in ("avfmae_pp_base", "avfmae_pp_large", "avfmae_pp_huge", "hicmae_base"):
        for batch in (32, 164):
            assert (model, batch, False, "auto") in steps
            assert (model, batch, True, "auto") in steps
    assert ("avfmae_pp_base", 32, False, "sdpa") in steps  # xformers' model-level effect
    order = [j.section for j in jobs]
    # compiled steps last (they run only as far as the budget allows), after the GPU-free sections
    first_compiled = next(i for i, j in enumerate(jobs) if j.config.get("compiled"))
    assert max(order.index(s) for s in ("inputs", "syncnet", "loader")) < first_compiled
    assert all(j.config.get("compiled") for j in jobs[first_compiled:])


def _records() -> list[dict]:
    step = dict(section="step", status="ok", compiled=False, attention_backend="auto", attention="xformers")
    step.update(step_ms_median=50.0, step_ms_min=49.0, step_ms_max=60.0, peak_mem_gib=20.0, warmup_s=3.0)
    return [
        {"section": "run", "status": "ok", "dry_run": False, "budget_s": 480},
        {"section": "env", "status": "ok", "gpu": "NVIDIA H200", "torch": "2.11.0", "xformers": "0.0.35"},
        {**step, "model": "avfmae_pp_base", "batch": 32, "clips_per_s": 300.0},
        {**step, "model": "avfmae_pp_base", "batch": 164, "clips_per_s": 500.0},
        {**step, "model": "hicmae_base", "batch": 32, "clips_per_s": 250.0},
        {**step, "model": "hicmae_base", "batch": 164, "clips_per_s": 480.0, "compiled": True},
        {"section": "step", "status": "oom", "model": "avfmae_pp_huge", "batch": 164, "error": "CUDA OOM"},
        {
            "section": "attention",
            "status": "ok",
            "where": "enc",
            "shape_bnhd": [32, 160, 12, 64],
            "sdpa_fwd_ms": 1.0,
            "sdpa_fwd_bwd_ms": 3.0,
            "xformers_fwd_ms": 0.9,
            "xformers_fwd_bwd_ms": 2.5,
            "max_abs_diff_fwd": 0.004,
            "max_abs_diff_bwd": 0.01,
            "xformers_speedup_fwd_bwd": 1.2,
        },  # fmt: skip
        {
            "section": "inputs",
            "status": "ok",
            "batch_index": 0,
            "device": "cuda",
            "video_shape": [32, 3],
            "audio_shape": [32, 1],
            "cropped_views": 30,
            "max_abs_diff_video": 1e-6,
            "max_abs_diff_audio": 2e-6,
            "tolerance": 1e-3,
            "cpu_ms": 900.0,
            "device_ms": 12.0,
        },  # fmt: skip
        {
            "section": "syncnet",
            "status": "ok",
            "kind": "speed",
            "precision": "bf16",
            "device": "cuda",
            "batch": 512,
            "frames": 3000,
            "scorer_frames_per_s": 6000.0,
            "network_frames_per_s": 20000.0,
        },  # fmt: skip
        {
            "section": "loader",
            "status": "ok",
            "model": "avfmae_pp_base",
            "batch": 32,
            "workers": 12,
            "steps": 100,
            "window_clips_per_s": [100.0, 280.0],
            "e2e_clips_per_s": 280.0,
            "wall_s": 20.0,
        },  # fmt: skip
        {"section": "run", "status": "ok", "kind": "end", "wall_s": 470.0},
    ]


def test_report_has_every_table_and_verdict(gpu, tmp_path):
    common, report, run = gpu["common"], gpu["report"], gpu["run"]
    for rec in _records():
        common.append_record(tmp_path, rec)
    text = report.write_report(tmp_path).read_text()
    for title in ("## Goals", "## Pre-training step", "## Attention", "## model_inputs", "## SyncNet"):
        assert title in text
    assert "## Real pre-training run" in text and "## Failed or skipped" in text
    goals = text.split("## Goals")[1].split("##")[0]
    assert "| Base, batch 32 | >= 3 x official (89) = 267 clips/s | 300.0 (eager) | pass |" in goals
    assert "| Base, batch 164 | >= 550 clips/s | 500.0 (eager) | **FAIL** |" in goals
    assert "1.20 x (300.0 / 250.0) | pass" in goals  # Base vs HiCMAE-B at 32
    assert "1.04 x (500.0 / 480.0) | **FAIL**" in goals  # at 164 against the compiled HiCMAE-B
    assert "0.93 x (280.0 / 300.0) | pass" in goals  # end-to-end vs step-only
    assert "oom" in text.split("## Failed or skipped")[1]
    # an OOM is a finding on the GPU, a broken plan in the dry run
    assert run.failures(common.read_records(tmp_path), dry_run=False) == []
    assert len(run.failures(common.read_records(tmp_path), dry_run=True)) == 1


def test_carried_wheels_are_locked(gpu):
    carry, prepare = gpu["carry"], gpu["prepare"]
    versions = prepare.locked_versions(list(carry.THIRD_PARTY))
    assert set(versions) == set(carry.THIRD_PARTY)
    assert set(carry.OPTIONAL) <= set(carry.THIRD_PARTY)
