"""Stages 1-4 on the real detectors (PySceneDetect, dlib, librosa, RetinaFace)."""

from __future__ import annotations

import numpy as np
import pytest

from avf_data.stages.crop import CropConfig, crop_clip
from avf_data.stages.face_filter import FaceFilterConfig, check_faces, face_stretches
from avf_data.stages.scene import SceneConfig, detect_cuts, split_scenes
from avf_data.stages.silence import SilenceConfig, split_speech

# ---------------------------------------------------------------- stage 1: scene cut


def test_scene_cut_splits_the_two_shots(demo_media):
    m = demo_media("scene_cut")
    cuts = detect_cuts(m.frames, m.fps)
    assert len(cuts) == 1 and abs(cuts[0] - m.num_frames // 2) <= 3
    segs, rejected = split_scenes(m.num_frames, cuts, m.fps, SceneConfig())
    assert len(segs) == 2 and not rejected
    assert segs[0].start == 0 and segs[-1].end == m.num_frames and segs[0].end == segs[1].start


def test_scene_single_shot_has_no_cut(demo_media):
    m = demo_media("single_face")
    assert detect_cuts(m.frames, m.fps) == []


def test_short_and_incomplete_segments_are_rejected():
    cfg = SceneConfig(min_segment_seconds=1.0)
    segs, rejected = split_scenes(200, [10, 100], 25.0, cfg, audio_coverage=0.6)
    codes = {(s.start, s.end): code for s, code, _ in rejected}
    assert codes == {(0, 10): "scene.short", (100, 200): "scene.incomplete"}  # audio ends at frame 120
    assert [(s.start, s.end) for s in segs] == [(10, 100)]


def test_content_detector_option(demo_media):
    m = demo_media("scene_cut")
    assert len(detect_cuts(m.frames, m.fps, SceneConfig(detector="content"))) == 1
    with pytest.raises(ValueError):
        detect_cuts(m.frames, m.fps, SceneConfig(detector="nope"))


# ---------------------------------------------------------------- stage 2: dlib face filter


def test_face_filter_accepts_one_face(demo_media):
    m = demo_media("single_face")
    r = check_faces(m.frames, 0, m.num_frames)
    assert r.reason is None and r.counts == [1, 1, 1]


def test_face_filter_rejects_two_faces(demo_media):
    m = demo_media("two_faces")
    r = check_faces(m.frames, 0, m.num_frames)
    assert r.code == "face.several" and r.reason


def test_face_filter_rejects_no_face(demo_media):
    m = demo_media("no_face")
    r = check_faces(m.frames, 0, m.num_frames)
    assert r.code == "face.none" and r.reason


def test_face_filter_rejects_tiny_and_cut_faces(canvas):
    tiny = np.stack([canvas(head=100)] * 3)  # ~70 px face in a 640x360 frame
    r = check_faces(tiny, 0, 3, FaceFilterConfig(min_face_fraction=0.3))
    assert r.code == "face.tiny" and r.reason
    edge = np.stack([canvas(head=260, centre=(640, 180))] * 3)  # half the head out of frame
    r = check_faces(edge, 0, 3)
    assert r.code is not None and r.code.startswith("face.") and r.reason


def test_face_filter_cuts_out_the_moment_a_second_face_appears(canvas):
    """One talking face for 4.4 s, then a second one joins without a cut, then leaves: the
    single-face stretches are kept, the moment with two is rejected with a 0.5 s margin
    (sampled every 0.2 s). Judged per scene, as before, the whole 12 s was lost."""
    one, two = canvas(head=200), canvas(head=200, faces=2)
    cfg = FaceFilterConfig(good_score=0.0)  # the still canvas face scores low; only the count matters here
    frames = np.stack([one] * 110 + [two] * 140 + [one] * 50)
    stretches = face_stretches(frames, 0, len(frames), 25.0, cfg)
    assert [st.check.code for st in stretches] == [None, "face.several", None]
    margin, step = 12, 5  # several_margin_seconds and resolution_seconds at 25 fps
    assert 110 - margin - step <= stretches[0].end <= 110 - margin + step
    assert 250 + margin - step <= stretches[1].end <= 250 + margin + step
    assert (stretches[0].start, stretches[-1].end) == (0, len(frames))
    assert "several faces (2 in a sampled frame)" in stretches[1].check.reason
    assert check_faces(frames, 0, len(frames), cfg).code == "face.several"  # the whole-scene verdict
    # a single-face moment shorter than min_seconds is not a clip of its own
    short = np.stack([two] * 100 + [one] * 15 + [two] * 100)
    assert [st.check.code for st in face_stretches(short, 0, len(short), 25.0, cfg)] == ["face.several"]


# ---------------------------------------------------------------- stage 3: silence split


def test_long_silence_gives_two_clips(demo_media):
    m = demo_media("long_silence")
    pieces = split_speech(m.audio, m.sample_rate, m.num_frames, m.fps)
    clips = [p for p in pieces if p.reason is None]
    gaps = [p for p in pieces if p.reason is not None]
    assert len(clips) == 2
    longest_gap = max(gaps, key=lambda p: p.end - p.start)
    assert 2.5 <= (longest_gap.end - longest_gap.start) / m.fps <= 3.5
    assert longest_gap.code == "silence.silence"
    # a partition of the segment: contiguous, complete
    assert pieces[0].start == 0 and pieces[-1].end == m.num_frames
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))


def _speechlike(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2  # syllable-like modulation, never silent
    return (0.2 * env * rng.standard_normal(len(t))).astype(np.float32)


def test_long_speech_is_chunked_and_short_speech_rejected():
    sr, fps = 16000, 25.0
    audio = np.concatenate(
        [_speechlike(20.0), np.zeros(sr * 2, np.float32), _speechlike(0.5, seed=1), np.zeros(sr * 2, np.float32)]
    )
    n = int(len(audio) / sr * fps)
    cfg = SilenceConfig(max_clip_seconds=8.0, min_clip_seconds=1.0)
    pieces = split_speech(audio, sr, n, fps, cfg)
    clips = [p for p in pieces if p.reason is None]
    assert len(clips) == 3 and all((p.end - p.start) / fps <= 8.0 for p in clips)
    assert any(p.code == "silence.short" for p in pieces)
    assert sum(p.end - p.start for p in pieces) == n


def test_silent_segment_is_all_rejected():
    pieces = split_speech(np.zeros(16000 * 3, np.float32), 16000, 75, 25.0)
    assert len(pieces) == 1 and pieces[0].code == "silence.no_speech"


# ---------------------------------------------------------------- stage 4: RetinaFace crop


def test_crop_tracks_the_face(demo_media):
    m = demo_media("single_face")
    clip = m.frames[:100]
    r = crop_clip(clip)
    assert r.reason is None
    assert r.frames.shape == (100, 160, 160, 3) and r.frames.dtype == np.uint8
    assert len(r.boxes) == 100
    # detections on a sub-sample only, and the window is square and constant in size
    assert len(r.det_frames) < 30 and all(s > 0.8 for s in r.det_scores)
    sides = {round(b[2] - b[0]) for b in r.boxes} | {round(b[3] - b[1]) for b in r.boxes}
    assert len(sides) == 1
    # the head is in the middle of the frame in the demo; the box centre follows it
    cx = np.mean([(b[0] + b[2]) / 2 for b in r.boxes])
    assert abs(cx - 320) < 40
    # smoothed track: frame-to-frame jumps of the centre stay small
    c = np.array([(b[0] + b[2]) / 2 for b in r.boxes])
    assert np.abs(np.diff(c)).max() <= 4


def test_crop_size_is_configurable(demo_media):
    m = demo_media("single_face")
    r = crop_clip(m.frames[:30], CropConfig(out_size=96, detect_every=3))
    assert r.reason is None and r.frames.shape == (30, 96, 96, 3)


def test_crop_rejects_no_face_and_two_faces(demo_media):
    r = crop_clip(demo_media("no_face").frames[:40])
    assert r.code == "crop.lost" and r.reason
    r = crop_clip(demo_media("two_faces").frames[:40])
    assert r.code == "crop.several" and r.reason


@pytest.mark.parametrize("n", [3, 8, 13, 40, 200])
def test_savgol_equals_scipy(n):
    """The crop track's smoothing is scipy's Savitzky-Golay filter, computed without scipy.signal."""
    from scipy.signal import savgol_filter

    from avf_data.stages.crop import savgol

    x = np.cumsum(np.random.default_rng(n).normal(size=n)) * 10 + 300
    w = min(13, n if n % 2 else n - 1)
    expected = savgol_filter(x, w, 2, mode="interp") if w >= 3 else x
    np.testing.assert_allclose(savgol(x, 13, 2), expected, rtol=0, atol=1e-9)
