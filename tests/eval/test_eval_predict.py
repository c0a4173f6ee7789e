"""`avf-eval predict` end to end on avf-data's demo videos with a tiny random checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("avf_models")
demo = pytest.importorskip("avf_data.demo")

from avf_eval.cli import main  # noqa: E402
from avf_eval.predict import NoUsableClipsError, load_model, predict_video  # noqa: E402
from avf_eval.protocols import get_protocol  # noqa: E402

CLASSES = list(get_protocol("dfew").classes)


NEEDED = ("single_face", "no_face")


@pytest.fixture(scope="module")
def demo_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("demo")
    # make_demo_inputs skips files that already exist; empty stand-ins for the demos this test
    # does not use save ~30 s of synthesis on a 2-core machine.
    for name in ("scene_cut", "two_faces", "long_silence", "shifted_audio", "corrupt"):
        (folder / f"{name}.mp4").write_bytes(b"")
    videos = demo.make_demo_inputs(folder)
    return {name: videos[name] for name in NEEDED}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from avf_models import create_model

    torch.manual_seed(0)
    model = create_model("avfmae_pp_tiny", stage="finetune", num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"format": 1, "stage": "finetune", "model_name": "avfmae_pp_tiny", "class_names": CLASSES,
                "model": model.state_dict()}, path)
    return path


def test_checkpoint_round_trip(checkpoint: Path) -> None:
    loaded = load_model(checkpoint)
    assert loaded.names == tuple(CLASSES) and loaded.names_source == "checkpoint"
    assert loaded.task == "classification" and loaded.views.frames == 16


def test_predict_single_face(demo_videos: dict[str, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(demo_videos["single_face"]), "--checkpoint", str(checkpoint), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["names"] == CLASSES and result["task"] == "classification"
    assert result["clips"], "the single-face demo must yield at least one clip"
    for clip in result["clips"]:
        assert len(clip["scores"]) == len(CLASSES)
        assert sum(clip["scores"]) == pytest.approx(1.0, abs=1e-6)
        assert min(clip["scores"]) >= 0.0 and clip["views"] >= 1 and clip["end"] > clip["start"]
    assert sum(result["scores"]) == pytest.approx(1.0, abs=1e-6)
    # the video distribution is the duration-weighted mean of the clip distributions
    weights = np.array([c["end"] - c["start"] for c in result["clips"]])
    expected = (np.array([c["scores"] for c in result["clips"]]) * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(result["scores"], expected, atol=1e-3)


def test_no_face_is_a_clear_error(demo_videos: dict[str, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NoUsableClipsError, match="no usable face clip.*face"):
        predict_video(demo_videos["no_face"], checkpoint)
    assert main(["predict", str(demo_videos["no_face"]), "-c", str(checkpoint)]) == 2
    assert "no face" in capsys.readouterr().err


def test_bad_checkpoint_messages(tmp_path: Path, demo_videos: dict[str, Path]) -> None:
    bare = tmp_path / "bare.pt"
    torch.save({"w": torch.zeros(1)}, bare)
    with pytest.raises(ValueError, match="bare state dict"):
        load_model(bare)
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
