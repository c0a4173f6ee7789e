"""Stage 5b quality: blur (variance of Laplacian), frozen and flat video."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from avf_data.stages.quality import QualityConfig, QualityResult, measure_quality, quality_verdict


@pytest.fixture(scope="module")
def face():
    """A real photo of a face (scikit-image's astronaut) as a 160x160 crop."""
    data = pytest.importorskip("skimage.data")
    img = data.astronaut()[10:250, 110:350]  # head, square
    return cv2.resize(img, (160, 160), interpolation=cv2.INTER_AREA)


def talking(face: np.ndarray, n: int = 50, size: int = 160) -> np.ndarray:
    """Frames with a mouth that opens and closes and a slight head drift."""
    frames = []
    for t in range(n):
        img = face.copy()
        open_px = int(3 + 6 * (1 + np.sin(0.8 * t)))
        cv2.ellipse(img, (80, 112), (14, open_px // 2 + 1), 0, 0, 360, (40, 15, 20), -1)
        m = np.float32([[1, 0, 1.5 * np.sin(0.2 * t)], [0, 1, np.cos(0.15 * t)]])
        img = cv2.warpAffine(img, m, (160, 160), borderMode=cv2.BORDER_REFLECT)
        frames.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) if size != 160 else img)
    return np.stack(frames)


def test_sharp_talking_clip_is_kept(face):
    q = measure_quality(talking(face))
    assert q.blur > 200 and q.motion > 1.0 and q.frozen_fraction == 0.0 and q.contrast > 20
    assert quality_verdict(q, QualityConfig()) is None
    json.dumps(q.to_json())


@pytest.mark.parametrize("sigma", [1.5, 2.5, 4.0])
def test_gaussian_blurred_clip_is_rejected(face, sigma):
    clip = talking(face)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in clip])
    q_sharp, q_blur = measure_quality(clip), measure_quality(blurred)
    assert q_blur.blur < q_sharp.blur / 10
    code, reason = quality_verdict(q_blur, QualityConfig())
    assert code == "quality.blur" and "variance of Laplacian" in reason


def test_blur_measure_is_roughly_size_independent(face):
    clip = talking(face, n=20)
    b160 = measure_quality(clip).blur
    b320 = measure_quality(np.stack([cv2.resize(f, (320, 320), interpolation=cv2.INTER_CUBIC) for f in clip])).blur
    b224 = measure_quality(talking(face, n=20, size=224)).blur
    for b in (b320, b224):
        assert 0.5 < b / b160 < 2.0
        assert b > QualityConfig().min_blur_variance


def test_median_over_frames_ignores_a_few_blurred_frames(face):
    clip = talking(face, n=40)
    clip[::8] = np.stack([cv2.GaussianBlur(f, (0, 0), 4) for f in clip[::8]])  # 5 of 40 blurred
    assert quality_verdict(measure_quality(clip), QualityConfig()) is None


def test_static_clip_is_rejected_as_frozen(face):
    still = np.repeat(face[None], 50, axis=0)
    q = measure_quality(still)
    assert q.motion == 0.0 and q.frozen_fraction == 1.0 and q.blur > 200
    code, reason = quality_verdict(q, QualityConfig())
    assert code == "quality.frozen" and "mean frame difference" in reason


def test_h264_encoded_still_image_is_rejected(face, tmp_path):
    """A still image encoded as video: codec noise only, no real motion."""
    av = pytest.importorskip("av")
    path = tmp_path / "still.mp4"
    with av.open(str(path), mode="w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 160, 160, "yuv420p"
        for _ in range(40):
            for pkt in st.encode(av.VideoFrame.from_ndarray(face, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    with av.open(str(path)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    q = measure_quality(decoded)
    assert len(decoded) == 40 and q.blur > QualityConfig().min_blur_variance
    assert q.motion < QualityConfig().min_motion
    assert quality_verdict(q, QualityConfig())[0] == "quality.frozen"


def test_small_pixel_noise_alone_does_not_count_as_motion(face):
    rng = np.random.default_rng(0)
    still = (
        np.clip(face[None].astype(np.float32) + rng.normal(0, 0.3, (50, 160, 160, 3)), 0, 255).round().astype(np.uint8)
    )
    q = measure_quality(still)
    assert q.motion < QualityConfig().min_motion < measure_quality(talking(face)).motion
    assert quality_verdict(q, QualityConfig())[0] == "quality.frozen"


def test_clip_frozen_for_most_of_its_length_is_rejected(face):
    clip = talking(face, n=50)
    clip[:35] = clip[0]  # frozen 70% of the time, then moves
    q = measure_quality(clip)
    assert q.motion > QualityConfig().min_motion  # the average alone would keep it
    assert q.frozen_fraction > 0.6
    assert quality_verdict(q, QualityConfig())[0] == "quality.frozen"
    assert "frame transitions identical" in quality_verdict(q, QualityConfig())[1]


def test_flat_clip_is_rejected(face):
    flat = np.full((30, 160, 160, 3), 118, np.uint8)
    q = measure_quality(flat)
    assert q.contrast == 0.0 and q.blur == 0.0
    assert quality_verdict(q, QualityConfig())[0] == "quality.flat"


def test_single_frame_and_empty():
    rng = np.random.default_rng(1)
    one = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    q = measure_quality(one)
    assert q.n_frames == 1 and q.frozen_fraction is None
    assert quality_verdict(q, QualityConfig()) == ("quality.frozen", "frozen video: single frame")
    q0 = measure_quality(np.zeros((0, 64, 64, 3), np.uint8))
    assert quality_verdict(q0, QualityConfig()) is not None


def test_thresholds_come_from_config(face):
    q = measure_quality(talking(face))
    assert quality_verdict(q, QualityConfig(min_blur_variance=q.blur + 1))[0] == "quality.blur"
    assert quality_verdict(q, QualityConfig(min_motion=q.motion + 1))[0] == "quality.frozen"
    # A result built by hand with only the two interface fields is judged on those.
    assert quality_verdict(QualityResult(blur=100.0, motion=1.0), QualityConfig()) is None
    assert quality_verdict(QualityResult(blur=10.0, motion=1.0), QualityConfig())[0] == "quality.blur"


def test_bad_input_shape():
    with pytest.raises(ValueError, match="RGB"):
        measure_quality(np.zeros((4, 32, 32), np.uint8))
