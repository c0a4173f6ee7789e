"""The stage registry is the one list of stages: a stage added there (one file, one line) shows
up in the config, the pipeline, the statistics, the report and ``--help``."""

from __future__ import annotations

import yaml
from toy_stage import LoudnessStage


def test_a_stage_added_through_the_registry_alone(monkeypatch, demo_inputs, tmp_path):
    from avf_data.build import build
    from avf_data.cli import stage_lines
    from avf_data.config import load_config
    from avf_data.stages import registry

    monkeypatch.setattr(registry, "STAGES", [*registry.STAGES, LoudnessStage])  # the one line
    cfg = load_config(sets=["loudness.min_rms=0.5", "output.thumbnails=false"])  # its section, typed
    assert cfg.loudness.min_rms == 0.5 and list(cfg.to_dict())[-3] == "loudness"
    out = tmp_path / "out"
    stats = build([str(demo_inputs["single_face"])], out, cfg, workers=0, progress=False)
    assert list(stats["stages"])[-1] == "loudness" and stats["stages"]["loudness"]["in"] == 1
    assert stats["rejects_by_code"]["loudness.quiet"]["count"] == 1 and stats["clips"] == 0
    report = (out / "report.md").read_text()
    assert "| loudness | 1 | 0 |" in report and "`loudness.quiet`" in report
    assert yaml.safe_load((out / "config.yaml").read_text())["loudness"] == {"mode": "enforce", "min_rms": 0.5}
    assert "loudness quiet clips out; codes: loudness.quiet" in stage_lines()


def test_every_stage_names_its_codes_in_the_readme():
    """The README's stage table lists what the registry holds (the docs cannot drift)."""
    from pathlib import Path

    from avf_data.stages import registry

    readme = (Path(__file__).resolve().parents[2] / "packages" / "avf-data" / "README.md").read_text()
    for cls in registry.STAGES:
        assert f"`{cls.name}`" in readme, cls.name
        for code in cls.codes:
            assert f"`{code}`" in readme, code
