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
from avf_eval.protocols import get_protocol  # noqa: E402
from avf_eval.video_emotions import NoUsableClipsError, load_model, predict_video  # noqa: E402

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
    torch.save(
        {
            "format": 1,
            "stage": "finetune",
            "model_name": "avfmae_pp_tiny",
            "class_names": CLASSES,
            "model": model.state_dict(),
        },
        path,
    )
    return path


def test_checkpoint_round_trip(checkpoint: Path) -> None:
    loaded = load_model(checkpoint)
    assert loaded.names == tuple(CLASSES) and loaded.names_source == "checkpoint"
    assert loaded.task == "classification" and loaded.views.num_frames == 16 and loaded.views.mode == "test"


def test_predict_single_face(
    demo_videos: dict[str, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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


def test_no_face_is_a_clear_error(
    demo_videos: dict[str, Path], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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


def test_missing_cuda_is_blamed_on_the_device_not_the_checkpoint(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")  # never opened: the device is checked first
    assert main(["predict", str(video), "-c", str(checkpoint), "--device", "cuda"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--device cuda: this machine has no CUDA device" in lines[0]
    assert "checkpoint" not in lines[0]
    assert main(["predict", str(video), "-c", str(checkpoint), "--device", "gpu0"]) == 2
    assert "not a torch device" in capsys.readouterr().err


def _avf_train_run(tmp_path: Path, task: str, num_classes: int, label_map: str) -> Path:
    """A run folder written with avf-train's own config and checkpoint helpers."""
    config = pytest.importorskip("avf_train.config")
    ckpt_io = pytest.importorskip("avf_train.checkpoint")
    from avf_models import create_model

    cfg = config.stage_defaults("finetune")
    cfg.model.name = "tiny"
    cfg.finetune.task = task
    cfg.finetune.num_classes = num_classes if not label_map else 0
    cfg.data.label_map = label_map
    overrides = {"task": "regression"} if task == "dea" else {}
    model = create_model("avfmae_pp_tiny", stage="finetune", num_classes=num_classes, **overrides)
    payload = {
        "stage": "finetune",
        "model_name": config.resolve_model_name(cfg.model.name),
        "model": model.state_dict(),
        "step": 10,
        "epoch": 1.0,
        "config": config.to_dict(cfg),
    }
    ckpt_io.save(tmp_path / "run", 10, payload)
    return tmp_path / "run"


def test_avf_train_checkpoint_layout(tmp_path: Path) -> None:
    from avf_eval.video_emotions import CuratedClip
    from avf_eval.video_emotions.run import clip_views

    loaded = load_model(_avf_train_run(tmp_path, "cea", 13, "cea13"))
    assert loaded.model_name == "avfmae_pp_tiny" and len(loaded.names) == 13
    assert loaded.names_source == "training label map" and "Happy" in loaded.names
    assert (loaded.views.test_segments, loaded.views.test_crops, loaded.views.sampling_rate) == (2, 2, 4)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (80, 160, 160, 3), dtype=np.uint8)
    audio = rng.normal(scale=0.1, size=16000 * 4).astype(np.float32)
    clip = CuratedClip("k", frames, audio, 25.0, 16000, 0.0, 3.2)
    video, fbank = clip_views(clip, loaded)
    assert video.shape == (2, 3, 16, 160, 160) and fbank.shape == (2, 1, 256, 128)  # square crops coincide
    # the views are avf-train's own test views (make_view, test mode): segment 0 crop 0, segment 1 crop 0
    from avf_train.transforms import make_view

    for index, view in enumerate((0, loaded.views.test_crops)):
        expected = make_view(frames, 25.0, audio, 16000, loaded.views, None, view=view)
        assert torch.equal(video[index], expected["video"]) and torch.equal(fbank[index], expected["audio"])
    with torch.no_grad():
        assert loaded.model(video, fbank).shape == (2, 13)


def test_avf_train_regression_checkpoint_uses_protocol_names(tmp_path: Path) -> None:
    loaded = load_model(_avf_train_run(tmp_path, "dea", 3, ""), protocol=get_protocol("werewolf-xl"))
    assert loaded.task == "regression" and loaded.names == ("arousal", "valence", "dominance")
    with pytest.raises(ValueError, match="regression model but protocol dfew is classification"):
        load_model(tmp_path / "run", protocol=get_protocol("dfew"))
    with pytest.raises(ValueError, match="3 outputs but protocol avcaffe-arousal names 4"):
        load_model(_avf_train_run(tmp_path / "b", "cea", 3, ""), protocol=get_protocol("avcaffe-arousal"))


def test_render_text() -> None:
    from avf_eval.video_emotions import ClipPrediction, VideoPrediction, render_prediction

    result = VideoPrediction(
        video="v.mp4",
        checkpoint="c.pt",
        model_name="m",
        task="classification",
        names=["a", "b", "c"],
        names_source="checkpoint",
        clips=[ClipPrediction("k0", 0.0, 2.0, 2, [0.2, 0.7, 0.1])],
        scores=[0.2, 0.7, 0.1],
        rejects=[{"stage": "silence", "reason": "silence (0.5 s)", "start": 2.0, "end": 2.5}],
    )
    text = render_prediction(result)
    assert result.top == "b" and "b 70.0%" in text and "silence" in text


def test_pretraining_and_pickled_checkpoints_are_refused(tmp_path: Path) -> None:
    from avf_models import create_model

    pre = tmp_path / "pre.pt"
    torch.save(
        {
            "format": 1,
            "stage": "pretrain",
            "model_name": "avfmae_pp_tiny",
            "model": create_model("avfmae_pp_tiny", stage="pretrain").state_dict(),
        },
        pre,
    )
    with pytest.raises(ValueError, match="'pretrain' checkpoint.*no classifier head"):
        load_model(pre)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model_name": "avfmae_pp_tiny", "model": {}, "extra": Path("x")}, pickled)
    with pytest.raises(ValueError, match="not a weights-only torch checkpoint"):
        load_model(pickled)


def test_exported_regression_checkpoint(tmp_path: Path) -> None:
    """The exported layout without a config: task and dimension names come from the file."""
    from avf_models import create_model

    model = create_model("avfmae_pp_tiny", stage="finetune", num_classes=3, task="regression", modality="video")
    path = tmp_path / "dea.pt"
    torch.save(
        {
            "model_name": "avfmae_pp_tiny",
            "task": "regression",
            "modality": "video",
            "dimensions": ["arousal", "valence", "dominance"],
            "model": model.state_dict(),
        },
        path,
    )
    loaded = load_model(path)
    assert loaded.task == "regression" and loaded.names == ("arousal", "valence", "dominance")
    assert loaded.names_source == "checkpoint" and loaded.config.model.modality == "video"
    with pytest.raises(ValueError, match="cannot load .* into avfmae_pp_tiny"):
        torch.save({"model_name": "avfmae_pp_tiny", "num_classes": 5, "model": model.state_dict()}, path)
        load_model(path)


def test_converted_official_finetune_checkpoint(tmp_path: Path) -> None:
    """`avf-models convert --out DIR` of a fine-tuned official file loads by its folder."""
    from avf_models import create_model
    from avf_models.cli import main as avf_models
    from avf_models.convert import ours_to_official_key

    model = create_model("avfmae_pp_tiny", stage="finetune", num_classes=3)
    torch.save(
        {"model": {ours_to_official_key(k): v for k, v in model.state_dict().items()}}, tmp_path / "official.pth"
    )
    assert avf_models(["convert", "--checkpoint", str(tmp_path / "official.pth"), "--out", str(tmp_path / "c")]) == 0
    loaded = load_model(tmp_path / "c")
    assert loaded.model_name == "avfmae_pp_tiny" and loaded.task == "classification" and len(loaded.names) == 3
    assert loaded.path.endswith("checkpoint.pt")
