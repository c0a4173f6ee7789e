"""Stage 5a sync: the weight-free fallback scorer and the reject rule.

Fixtures are synthetic face crops whose mouth opening follows a syllable-like
envelope, with audio (amplitude-modulated noise + voicing) following the same
envelope; "shifted" clips delay the audio by a known number of frames.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from avf_data.stages.sync import (
    METHOD_FALLBACK,
    MotionEnvelopeScorer,
    SyncConfig,
    SyncResult,
    build_sync_scorer,
    sync_reject_reason,
)

FPS = 25
SR = 16000
SPF = SR // FPS  # 640 samples per video frame


def syllable_envelope(n_frames: int, seed: int) -> np.ndarray:
    """Per-frame opening in [0, 1]: random syllables of 3-8 frames with short gaps."""
    rng = np.random.default_rng(seed)
    env = np.zeros(n_frames)
    t = int(rng.integers(2, 6))
    while t < n_frames:
        length = int(rng.integers(3, 9))
        amp = rng.uniform(0.4, 1.0)
        bump = amp * np.sin(np.linspace(0, np.pi, length + 2)[1:-1])
        env[t : t + length] = bump[: max(0, min(length, n_frames - t))]
        t += length + int(rng.integers(1, 7))
    return env


def audio_from_envelope(env: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    n = len(env) * SPF
    frame_pos = (np.arange(len(env)) + 0.5) * SPF
    amp = np.interp(np.arange(n), frame_pos, env)
    t = np.arange(n) / SR
    voice = np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t)
    audio = amp * (0.15 * voice + 0.1 * rng.standard_normal(n)) + 0.002 * rng.standard_normal(n)
    return audio.astype(np.float32)


def face_clip(env: np.ndarray, size: int = 160, seed: int = 0, jitter: float = 1.5) -> np.ndarray:
    """(T, size, size, 3) uint8 RGB: a textured 'face' with a dark mouth opening by ``env``."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(60, 200, (size, size)).astype(np.float32), (0, 0), 2.0)
    cv2.ellipse(base, (size // 2, int(0.42 * size)), (int(0.3 * size), int(0.38 * size)), 0, 0, 360, 170, -1)
    cv2.circle(base, (int(0.38 * size), int(0.33 * size)), size // 20, 40, -1)
    cv2.circle(base, (int(0.62 * size), int(0.33 * size)), size // 20, 40, -1)
    frames = np.empty((len(env), size, size, 3), np.uint8)
    mouth = (size // 2, int(0.66 * size))
    for i, e in enumerate(env):
        img = base.copy()
        cv2.ellipse(img, mouth, (size // 7, max(1, int(2 + e * size / 12))), 0, 0, 360, 25, -1)
        # Residual crop jitter (sub-pixel shift) + sensor noise, as a tracked crop has.
        dx, dy = jitter * np.sin(0.3 * i + seed), jitter * np.cos(0.23 * i)
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        img = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT)
        img = img + rng.normal(0, 2.0, img.shape)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    return frames


def delay(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Positive = audio delayed (lags the video), negative = audio leads."""
    if n_samples >= 0:
        return np.concatenate([np.zeros(n_samples, np.float32), audio])[: len(audio)]
    return np.concatenate([audio[-n_samples:], np.zeros(-n_samples, np.float32)])


@pytest.fixture(scope="module")
def talking():
    env = syllable_envelope(150, seed=3)  # 6 s
    return face_clip(env, seed=3), audio_from_envelope(env, seed=3)


@pytest.fixture(scope="module")
def scorer():
    return build_sync_scorer(SyncConfig())


def test_build_without_weights_gives_fallback(scorer):
    assert isinstance(scorer, MotionEnvelopeScorer)
    assert scorer.method == METHOD_FALLBACK == "fallback_motion_envelope"


def test_fallback_in_sync_is_kept(scorer, talking):
    frames, audio = talking
    cfg = SyncConfig()
    r = scorer.score(frames, audio, fps=FPS, sample_rate=SR)
    assert r.method == METHOD_FALLBACK and r.valid
    assert r.offset_frames == 0
    assert r.confidence > 0.5
    assert r.min_distance is None
    assert sync_reject_reason(r, cfg) is None


@pytest.mark.parametrize("shift", [12, -12, 2])
def test_fallback_finds_known_shift(scorer, talking, shift):
    frames, audio = talking
    r = scorer.score(frames, delay(audio, shift * SPF))
    # SyncNet's sign convention: audio delayed (lagging) -> negative offset.
    assert r.offset_frames == -shift
    assert r.confidence > SyncConfig().min_confidence_fallback


def test_shifted_half_second_is_rejected(scorer, talking):
    frames, audio = talking
    cfg = SyncConfig()
    r = scorer.score(frames, delay(audio, int(0.5 * SR)))  # 12 frames at 25 fps
    assert abs(r.offset_frames + 12) <= 1
    reason = sync_reject_reason(r, cfg)
    assert reason is not None and "offset" in reason and "fallback_motion_envelope" in reason


def test_small_shift_within_tolerance_is_kept(scorer, talking):
    frames, audio = talking
    r = scorer.score(frames, delay(audio, 2 * SPF))
    assert sync_reject_reason(r, SyncConfig()) is None
    assert sync_reject_reason(r, SyncConfig(max_offset_frames=1)) is not None


def test_unrelated_audio_has_low_confidence_and_is_rejected(scorer, talking):
    frames, _ = talking
    other = audio_from_envelope(syllable_envelope(len(frames), seed=99), seed=99)
    r = scorer.score(frames, other)
    assert r.confidence < SyncConfig().min_confidence_fallback
    assert sync_reject_reason(r, SyncConfig()) is not None


def test_short_one_second_clip_gives_clear_result(scorer, talking):
    frames, audio = talking
    r = scorer.score(frames[25:50], audio[25 * SPF : 50 * SPF])
    assert r.valid and r.n_windows == 24
    assert "short clip" in r.note and "±12" in r.note  # search range shrinks with the clip
    assert abs(r.offset_frames) <= 1
    json.dumps(r.to_json())


@pytest.mark.parametrize(
    "n_frames, audio_len, why",
    [(2, 2 * SPF, "too short"), (10, 10 * SPF, "too short"), (40, 0, "no audio")],
)
def test_unmeasurable_clips_are_rejected_with_reason(scorer, talking, n_frames, audio_len, why):
    frames, audio = talking
    r = scorer.score(frames[:n_frames], audio[:audio_len])
    assert not r.valid and why in r.note
    reason = sync_reject_reason(r, SyncConfig())
    assert reason.startswith("sync not measurable") and why in reason


def test_silent_audio_and_still_video_are_not_measurable(scorer, talking):
    frames, audio = talking
    r = scorer.score(frames, np.zeros_like(audio))
    assert not r.valid and "silent" in r.note
    r = scorer.score(np.repeat(frames[:1], len(frames), axis=0), audio)
    assert not r.valid and "motion" in r.note


def test_other_crop_sizes_and_fps(scorer):
    env = syllable_envelope(125, seed=5)
    audio = audio_from_envelope(env, seed=5)
    for size in (96, 224):
        r = scorer.score(face_clip(env, size=size, seed=5), delay(audio, 8 * SPF))
        assert r.offset_frames == -8, size
    # 44.1 kHz audio is handled through its sample rate.
    from scipy.signal import resample_poly

    r = scorer.score(face_clip(env, seed=5), resample_poly(audio, 441, 160).astype(np.float32), sample_rate=44100)
    assert r.offset_frames == 0 and r.valid


def test_reject_rule_uses_per_method_threshold():
    cfg = SyncConfig()
    weak = SyncResult(offset_frames=0, confidence=1.0, min_distance=7.0, method="syncnet_v2")
    assert "confidence 1.00 < 3" in sync_reject_reason(weak, cfg)
    assert sync_reject_reason(SyncResult(0, 5.0, 6.0, "syncnet_v2"), cfg) is None
    assert sync_reject_reason(SyncResult(0, 1.0, None, METHOD_FALLBACK), cfg) is None  # 1.0 > 0.3
    assert "offset -4" in sync_reject_reason(SyncResult(-4, 9.0, 5.0, "syncnet_v2"), cfg)
    assert sync_reject_reason(SyncResult(3, 9.0, 5.0, "syncnet_v2"), cfg) is None
    assert sync_reject_reason(SyncResult(0, float("nan"), None, METHOD_FALLBACK), cfg) is not None


def test_result_json_roundtrip():
    r = SyncResult(offset_frames=np.int64(-2), confidence=np.float32(0.5), min_distance=None, method=METHOD_FALLBACK)
    d = json.loads(json.dumps(r.to_json()))
    assert d["offset_frames"] == -2 and d["confidence"] == pytest.approx(0.5)
    assert d["method"] == METHOD_FALLBACK and d["min_distance"] is None and d["valid"] is True


def test_demo_talking_face_in_sync_and_shifted(scorer):
    """The project's demo face (astronaut photo, mouth driven by real espeak speech)."""
    demo = pytest.importorskip("avf_data.demo")
    import cv2

    speech = demo.load_speech(1)[: 4 * SR]
    frames, audio = demo._talking_clip(demo._pad(speech, 0.3, 0.3), seed=1)
    # Crop a square 1.8 x the head height around the (slowly drifting) head,
    # without following the drift: the fallback compensates global shifts.
    side = int(230 * 1.8 * 0.8)
    cx, cy = frames.shape[2] // 2, frames.shape[1] // 2
    y0, x0 = max(0, cy - side // 2), cx - side // 2
    crops = np.stack(
        [cv2.resize(f[y0 : y0 + side, x0 : x0 + side], (160, 160), interpolation=cv2.INTER_AREA) for f in frames]
    )
    cfg = SyncConfig()
    r = scorer.score(crops, audio)
    assert r.offset_frames in (-1, 0, 1) and sync_reject_reason(r, cfg) is None, r
    r = scorer.score(crops, delay(audio, int(0.5 * SR)))
    assert r.offset_frames in (-12, -13), r  # 0.5 s = 12.5 frames
    assert "offset" in sync_reject_reason(r, cfg)
