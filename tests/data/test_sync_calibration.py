"""A sync expert's sidecar (``WEIGHTS.json``): when its rule applies, and when it is refused."""

from __future__ import annotations

import json

import pytest

from avf_data.stages.sync import SyncConfig
from avf_data.stages.sync_calibration import apply_calibration, expert_line, read_calibration, write_calibration

RULE = {"rule": {"min_confidence": 1.25, "max_offset_frames": 1}, "input": "crop",
        "calibration": {"measured_on": "40 held-out clips"}}  # fmt: skip


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "expert.model"
    path.write_bytes(b"weights")  # only hashed here; loading is the scorer's business
    return path


def test_a_sidecar_replaces_the_reference_rule(weights):
    write_calibration(weights, RULE)
    cfg, expert = apply_calibration(SyncConfig(), weights)
    assert (cfg.min_confidence_syncnet, cfg.max_offset_frames, cfg.input) == (1.25, 1, "crop")
    assert expert["weights"] == "expert.model" and "sidecar" in expert["calibration"]
    assert "40 held-out clips" in expert["calibration"] and "confidence < 1.25" in expert_line(expert)


def test_without_a_sidecar_or_with_calibration_config_the_config_applies(weights):
    cfg, expert = apply_calibration(SyncConfig(), weights)
    assert (cfg.min_confidence_syncnet, cfg.max_offset_frames, cfg.input) == (3.0, 3, "source")
    assert "no sidecar" in expert["calibration"]
    write_calibration(weights, RULE)
    cfg, expert = apply_calibration(SyncConfig(calibration="config", min_confidence_syncnet=5.0), weights)
    assert cfg.min_confidence_syncnet == 5.0 and "sync.calibration: config" in expert["calibration"]
    assert apply_calibration(SyncConfig(), None) == (SyncConfig(), None)


def test_a_sidecar_of_other_weights_or_a_broken_one_is_refused(weights, tmp_path):
    write_calibration(weights, RULE)
    weights.write_bytes(b"retrained")  # the sidecar no longer describes the file beside it
    with pytest.raises(ValueError, match="measured with other weights"):
        read_calibration(weights)
    (tmp_path / "expert.model.json").write_text(json.dumps({"format": "avf-syncnet-expert/1"}))
    with pytest.raises(ValueError, match="not usable"):
        read_calibration(weights)
    with pytest.raises(ValueError, match="sync.calibration must be one of"):
        apply_calibration(SyncConfig(calibration="sometimes"), weights)


def test_a_weak_expert_is_obeyed_and_warned_about(weights):
    """An expert its own sidecar calls weak still decides (the user chose it), but every output
    that names it says so: a rule measured near chance rejects good clips as readily as bad."""
    weak = {**RULE, "calibration": {"measured_on": "6 training clips", "weak": True, "in_sync_kept": 0.5,
                                    "mismatched_rejected": 0.6, "shifted5_rejected": 0.4}}  # fmt: skip
    write_calibration(weights, weak)
    cfg, expert = apply_calibration(SyncConfig(), weights)
    assert cfg.min_confidence_syncnet == 1.25  # obeyed
    assert "is weak" in expert["warning"] and "kept 50%" in expert["warning"] and "rejected 60%" in expert["warning"]
    assert "40% of the clips with audio 5 frames late" in expert["warning"]
    assert "WARNING: sync expert expert.model is weak" in expert_line(expert)
    write_calibration(weights, RULE)  # not weak: no warning anywhere
    expert = apply_calibration(SyncConfig(), weights)[1]
    assert expert["warning"] is None and "WARNING" not in expert_line(expert)
