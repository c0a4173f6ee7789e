"""``avf-train syncnet`` on a tiny avf-data build: a few steps, the export that avf-data accepts
(weights + calibrated sidecar, the sync pass's accounting intact), bit-identical resume, and the
one-line errors. Tiny runs: 2 windows per clip visit, shifts of up to 4 frames."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from run_args import ONE_CPU

from avf_train.cli import main

TINY = [*ONE_CPU, "--batch-size", "2", "--set", "run.log_every=1", "--set", "syncnet.windows=2",
        "--set", "syncnet.max_shift=4"]  # fmt: skip


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four 2.2 s talking-face inputs (the demo renderer, real speech) built by avf-data: two
    ranks of two clips each in the torchrun test."""
    from avf_data.build import build
    from avf_data.demo import FPS, SAMPLE_RATE, load_speech, render_talking_face, speech_envelope, write_av

    root = tmp_path_factory.mktemp("sync-expert")
    speech, hop, n = load_speech(1), SAMPLE_RATE // FPS, 55
    inputs = []
    for i in range(4):
        audio = speech[i * 40 * hop : (i * 40 + n) * hop].astype(np.float32)
        frames = render_talking_face(speech_envelope(audio, num_frames=n), seed=i, background=i % 2)
        inputs.append(str(write_av(root / "src" / f"talk{i}.mp4", frames, audio)))
    stats = build(inputs, root / "corpus", workers=0, progress=False)
    assert stats["clips"] == 4, stats["rejects_by_code"]
    return root / "corpus"


def _train(corpus: Path, out: Path, *extra: str) -> int:
    return main(["syncnet", "--data", str(corpus / "shards" / "*.tar"), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def expert(corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("expert") / "run"
    assert _train(corpus, run, "--max-steps", "2", "--set", "syncnet.calibration_clips=3") == 0
    return run


def test_the_run_exports_weights_avf_data_loads_with_a_calibrated_sidecar(expert):
    from avf_data.stages.sync_calibration import read_calibration, weights_sha1
    from avf_data.stages.syncnet import OFFICIAL_STATE_DICT_SHAPES, load_syncnet_v2

    weights = expert / "syncnet_expert.model"
    state = torch.load(weights, weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == OFFICIAL_STATE_DICT_SHAPES  # syncnet_v2.model's layout
    load_syncnet_v2(weights)
    cal = read_calibration(weights)
    assert cal is not None and cal.weights_sha1 == weights_sha1(weights) and cal.input == "source"
    assert 1 <= cal.max_offset_frames <= 3 and np.isfinite(cal.min_confidence)
    side = json.loads((expert / "syncnet_expert.model.json").read_text())
    assert side["calibration"]["clips"] == 3 and "training shards" in side["calibration"]["measured_on"]
    summary = json.loads((expert / "summary.json").read_text())
    assert summary["step"] == 2 and summary["expert"]["weights"].endswith("syncnet_expert.model")
    records = _jsonl(expert / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) and "top1" in r for r in records)


def test_avf_data_sync_scores_with_the_expert_and_its_rule(corpus, expert, tmp_path, capsys):
    from avf_data.cli import main as avf_data
    from avf_data.shards import iter_raw_samples
    from avf_data.stages.sync_calibration import read_calibration

    out = tmp_path / "corpus"
    shutil.copytree(corpus, out)

    def seconds_by_source() -> dict[str, float]:
        acc: dict[str, float] = defaultdict(float)
        for r in _jsonl(out / "manifest.jsonl") + _jsonl(out / "rejects.jsonl"):
            acc[r["source"]] += r["seconds"]
        return {k: round(v, 4) for k, v in acc.items()}

    before, keys = seconds_by_source(), {r["key"] for r in _jsonl(out / "manifest.jsonl")}
    weights = expert / "syncnet_expert.model"
    assert avf_data(["sync", str(out), "--syncnet-weights", str(weights), "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    cal = read_calibration(weights)
    rule = stats["sync_pass"]
    assert (rule["min_confidence_syncnet"], rule["max_offset_frames"]) == (cal.min_confidence, cal.max_offset_frames)
    assert stats["sync_expert"]["weights_sha1"] == cal.weights_sha1 and "sidecar" in stats["sync_expert"]["calibration"]
    assert "sync expert: `syncnet_expert.model`" in (out / "report.md").read_text()
    weak = json.loads((expert / "syncnet_expert.model.json").read_text())["calibration"]["weak"]
    assert ("is weak" in capsys.readouterr().err) == weak  # a weak expert is warned about where it is used
    # accounting: every clip is in a shard or in the rejects, every input second still counted
    kept = {s["__key__"] for s in iter_raw_samples(sorted(str(p) for p in (out / "shards").glob("*.tar")))}
    moved = {r["key"] for r in _jsonl(out / "rejects.jsonl") if r.get("stage") == "sync"}
    assert kept | moved == keys and not kept & moved
    assert seconds_by_source() == before


def test_resume_is_bit_identical(corpus, expert, tmp_path):
    run = tmp_path / "halves"
    no_calibration = ["--set", "syncnet.calibration_clips=0", "--set", "run.save_every=1"]
    assert _train(corpus, run, "--max-steps", "1", *no_calibration) == 0
    assert _train(corpus, run, "--max-steps", "2", "--resume", *no_calibration) == 0
    assert [r["loss"] for r in _jsonl(run / "metrics.jsonl")] == [r["loss"] for r in _jsonl(expert / "metrics.jsonl")]
    a = torch.load(run / "checkpoint", weights_only=True)["model"]
    b = torch.load(expert / "checkpoint", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    side = json.loads((run / "syncnet_expert.model.json").read_text())
    assert side["calibration"]["calibrated"] is False  # nothing measured: the reference's rule, said so
    assert side["calibration"]["weak"] is True
    assert side["rule"]["min_confidence"] == 3.0


def test_missing_sources_and_bad_sidecars_are_one_line_errors(corpus, expert, tmp_path, capsys):
    from avf_data.cli import main as avf_data

    src = corpus.parent / "src"
    hidden = corpus.parent / "src-hidden"
    src.rename(hidden)
    try:
        assert _train(corpus, tmp_path / "nosrc", "--max-steps", "1") == 2
    finally:
        hidden.rename(src)
    err = capsys.readouterr().err.strip()
    assert err.startswith("avf-train: error: 4 of 4 clips have no usable source crop") and "\n" not in err
    assert "syncnet.input=crop" in err
    # a sidecar beside other weights is refused, not applied
    other = tmp_path / "other.model"
    torch.save({k: v + 1 for k, v in torch.load(expert / "syncnet_expert.model", weights_only=True).items()}, other)
    shutil.copy(expert / "syncnet_expert.model.json", tmp_path / "other.model.json")
    out = tmp_path / "corpus"
    shutil.copytree(corpus, out)
    assert avf_data(["sync", str(out), "--syncnet-weights", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "measured with other weights" in err and "\n" not in err


@pytest.mark.slow
def test_torchrun_two_processes_train_and_export(corpus, tmp_path):
    """DDP: two CPU ranks, two clips each (the other clips of a rank's batch are its negatives);
    rank 0 exports the expert once."""
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "avf_train.cli", "syncnet",
           "--data", str(corpus / "shards" / "*.tar"), "--out", str(run), "--max-steps", "2", "--device", "cpu",
           *TINY, "--set", "syncnet.calibration_clips=4"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "checkpoint", weights_only=True)
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2 and len(ckpt["data"]) == 2
    from avf_data.stages.sync_calibration import read_calibration

    assert read_calibration(run / "syncnet_expert.model") is not None


def test_an_expert_blind_to_delays_is_weak_even_when_it_matches_voices_to_faces():
    """Realdev's 300-step expert told another clip's audio from the clip's own, but not its own
    audio five frames late: that expert must be called weak, not trusted as a sync filter."""
    from types import SimpleNamespace

    from avf_train.sync_export import WEAK_BELOW, choose_rule

    def results(*conf: float) -> list:
        return [SimpleNamespace(valid=True, offset_frames=0, confidence=c) for c in conf]

    sync, other = results(5, 6, 7, 8), results(0, 0.5, 1, 1.5)
    blind = choose_rule({"in_sync": sync, "mismatched": other, "shifted5": results(5, 6, 7, 8)})
    assert blind["mismatched_rejected"] == 1.0 and blind["separation"] < WEAK_BELOW
    sharp = choose_rule({"in_sync": sync, "mismatched": other, "shifted5": results(1, 2, 2, 3)})
    assert sharp["separation"] == 1.0
