"""Stage 5a: audio-visual synchronisation check (paper §4.1, stage 5).

Two scorers return the same :class:`SyncResult`:

``SyncNetScorer`` (``method = "syncnet_v2"``)
    The SyncNet v2 network (:mod:`avf_data.stages.syncnet`) with the official
    ``syncnet_v2.model`` weights, used when a weights path is given. Offset
    search over ``±search_frames`` video frames exactly as the original
    ``SyncNetInstance.evaluate``: mean Euclidean embedding distance per shift,
    ``offset = argmin`` in SyncNet's sign convention, ``confidence = median -
    min`` of the per-shift mean distances, ``min_distance`` = that minimum.

``MotionEnvelopeScorer`` (``method = "fallback_motion_envelope"``)
    Weight-free fallback (numpy + a few OpenCV image ops, no model). Video
    signal: mean absolute grey-level frame difference in the lower-middle part
    of the face crop (rows 45-90 %, columns 25-75 %, where the mouth sits in a
    centred face crop), after compensating the global frame-to-frame shift
    (phase correlation on the upper face).
    Audio signal: RMS envelope of the audio in one-video-frame windows
    (i.e. resampled to the video frame rate); because frame differences
    measure *change* of the mouth shape, the audio signal used is the absolute
    frame-to-frame change of that envelope. Both are high-passed (minus a
    9-frame moving average) and compared by normalised (Pearson)
    cross-correlation at every shift ``k`` in ``±search_frames`` over the
    overlapping frames (at least ``max(12, n/2)`` frames must overlap, so
    short clips search a smaller range). ``confidence = peak correlation -
    median correlation over the shifts`` (dimensionless, in [0, 2]); a clip
    whose mouth motion follows the audio has one clear peak (demo clips
    decoded from mp4 and cropped by stage 4: 0.45-0.85; synthetic: ~0.95),
    unrelated speech or noise gives ≈0.1-0.25.
    ``min_distance`` is ``None`` for this method.

Offset sign (both methods, SyncNet's convention): the best match pairs video
frame ``i`` with audio frame ``i + k``; ``offset_frames = -k``. **Negative =
audio lags the video** (audio delayed, e.g. -12 for a 0.5 s delay at 25 fps),
positive = audio leads.

Rejection (:func:`sync_reject_reason`): ``|offset| > max_offset_frames`` or
``confidence < min_confidence_<method>`` or the clip could not be measured
(too short, silent, no motion). Defaults:

* ``max_offset_frames = 3`` (±120 ms at 25 fps): leaves room for container /
  codec delays (an AAC track decoded without priming trim lags by 1024
  samples ≈ 1.6 frames at 16 kHz; the demo mp4s measure -2) while a 0.5 s
  dubbing error (12-13 frames) is far outside.
* ``min_confidence_syncnet = 3.0``: the official repository sets no threshold;
  3 is the cut-off commonly used to curate talking-face data with the same
  model (e.g. LatentSync's data pipeline, ``--sync_conf_threshold 3``); the
  official demo clip scores ≈10.
* ``min_confidence_fallback = 0.3``: peak-minus-median correlation; chosen on
  synthetic and demo clips (in-sync ≥0.45, unrelated audio ≤0.25).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "SyncConfig",
    "SyncResult",
    "SyncScorer",
    "MotionEnvelopeScorer",
    "SyncNetScorer",
    "build_sync_scorer",
    "sync_reject_reason",
    "METHOD_SYNCNET",
    "METHOD_FALLBACK",
]

METHOD_SYNCNET = "syncnet_v2"
METHOD_FALLBACK = "fallback_motion_envelope"


@dataclass
class SyncConfig:
    max_offset_frames: int = 3
    search_frames: int = 15
    min_confidence_syncnet: float = 3.0
    min_confidence_fallback: float = 0.3
    device: str = "cpu"
    # Extensions (defaulted): SyncNet only.
    # Our face-crop side / detected face-box side: 1.8 = CropConfig.margin's
    # default (stage 4 centres a square window of max face side x margin on
    # the smoothed face centre). Used to rebuild SyncNet's own crop geometry.
    face_crop_scale: float = 1.8
    batch_size: int = 20  # SyncNet windows per forward pass


@dataclass
class SyncResult:
    offset_frames: int
    confidence: float
    min_distance: float | None
    method: str
    # Extensions (defaulted): number of windows/frames the score is based on,
    # whether the clip could be measured at all, and a human-readable note.
    n_windows: int = 0
    valid: bool = True
    note: str | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["offset_frames"] = int(self.offset_frames)
        d["confidence"] = float(self.confidence)
        d["min_distance"] = None if self.min_distance is None else float(self.min_distance)
        return d


@runtime_checkable
class SyncScorer(Protocol):
    method: str

    def score(
        self, frames: np.ndarray, audio: np.ndarray, fps: float = 25.0, sample_rate: int = 16000
    ) -> SyncResult: ...


def sync_reject_reason(result: SyncResult, cfg: SyncConfig) -> str | None:
    """``None`` keeps the clip; otherwise a short reason string."""
    if not result.valid:
        return f"sync not measurable ({result.method}): {result.note or 'unknown'}"
    if abs(int(result.offset_frames)) > cfg.max_offset_frames:
        return (
            f"av offset {result.offset_frames:+d} frames exceeds ±{cfg.max_offset_frames} "
            f"({result.method}, confidence {result.confidence:.2f})"
        )
    thr = cfg.min_confidence_syncnet if result.method == METHOD_SYNCNET else cfg.min_confidence_fallback
    if not np.isfinite(result.confidence) or result.confidence < thr:
        return f"sync confidence {result.confidence:.2f} < {thr:g} ({result.method})"
    return None


# --------------------------------------------------------------------------- helpers


def _check_inputs(frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {frames.shape}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:  # (n, channels) or (channels, n): downmix
        audio = audio.mean(axis=1 if audio.shape[1] < audio.shape[0] else 0)
    return frames, audio.reshape(-1)


def _to_25fps(frames: np.ndarray, fps: float, target: float = 25.0) -> np.ndarray:
    if abs(fps - target) < 1e-3 or len(frames) == 0:
        return frames
    n_out = max(1, int(round(len(frames) * target / fps)))
    idx = np.minimum(np.round(np.arange(n_out) * fps / target).astype(int), len(frames) - 1)
    return frames[idx]


def _resample_audio(audio: np.ndarray, sr: int, target: int) -> np.ndarray:
    if int(sr) == target or audio.size == 0:
        return audio
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(sr), target)
    return resample_poly(audio, target // g, int(sr) // g).astype(np.float32)


def _invalid(method: str, note: str, n: int = 0) -> SyncResult:
    return SyncResult(
        offset_frames=0, confidence=0.0, min_distance=None, method=method, n_windows=n, valid=False, note=note
    )


# --------------------------------------------------------------------------- fallback


def _gray(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def mouth_motion(frames: np.ndarray, compensate: bool = True) -> np.ndarray:
    """Mean |frame difference| in the lower-middle face region; length ``T - 1``.

    Element ``t - 1`` is the change from frame ``t - 1`` to frame ``t``. Frames
    are converted to grey and slightly blurred (sigma 1 px). With
    ``compensate`` the global shift between the two frames is estimated by
    phase correlation on the upper face (rows 10-45 %, no mouth in it) and
    the previous frame is shifted by it before differencing, so residual
    head/crop jitter does not swamp the mouth signal.
    """
    import cv2

    t, h, w = frames.shape[:3]
    r0, r1 = int(0.45 * h), max(int(0.90 * h), int(0.45 * h) + 1)
    c0, c1 = int(0.25 * w), max(int(0.75 * w), int(0.25 * w) + 1)
    u0, u1 = int(0.10 * h), max(int(0.45 * h), int(0.10 * h) + 1)
    g = _gray(frames)
    g = np.stack([cv2.GaussianBlur(x, (0, 0), 1.0) for x in g]) if min(h, w) >= 16 else g
    if not compensate or (u1 - u0) < 8 or (c1 - c0) < 8:
        return np.abs(np.diff(g[:, r0:r1, c0:c1], axis=0)).mean(axis=(1, 2))
    win = cv2.createHanningWindow((c1 - c0, u1 - u0), cv2.CV_32F)
    upper = np.ascontiguousarray(g[:, u0:u1, c0:c1])
    out = np.empty(t - 1, dtype=np.float32)
    for i in range(1, t):
        (dx, dy), _ = cv2.phaseCorrelate(upper[i - 1], upper[i], win)
        prev = g[i - 1]
        if abs(dx) > 0.05 or abs(dy) > 0.05:
            if abs(dx) > 0.25 * w or abs(dy) > 0.25 * h:  # implausible: no compensation
                dx = dy = 0.0
            else:
                m = np.float32([[1, 0, dx], [0, 1, dy]])
                prev = cv2.warpAffine(prev, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        out[i - 1] = np.abs(g[i, r0:r1, c0:c1] - prev[r0:r1, c0:c1]).mean()
    return out


def audio_envelope(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """RMS of the audio in each video frame's time span (missing audio = 0)."""
    spf = sample_rate / fps
    edges = np.round(np.arange(n_frames + 1) * spf).astype(np.int64)
    sq = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    lo = np.minimum(edges[:-1], audio.size)
    hi = np.minimum(edges[1:], audio.size)
    count = np.maximum(hi - lo, 1)
    return np.sqrt((sq[hi] - sq[lo]) / count)


def _highpass(x: np.ndarray, win: int = 9) -> np.ndarray:
    if x.size < 3:
        return x - x.mean()
    from scipy.ndimage import uniform_filter1d

    return x - uniform_filter1d(x, size=min(win, x.size), mode="nearest")


def lagged_ncc(video_sig: np.ndarray, audio_sig: np.ndarray, max_lag: int, min_overlap: int) -> dict[int, float]:
    """Pearson correlation of ``video[i]`` with ``audio[i + k]`` for each usable ``k``."""
    n = min(video_sig.size, audio_sig.size)
    v, a = video_sig[:n], audio_sig[:n]
    out: dict[int, float] = {}
    for k in range(-max_lag, max_lag + 1):
        i0, i1 = max(0, -k), min(n, n - k)
        if i1 - i0 < min_overlap:
            continue
        x = v[i0:i1] - v[i0:i1].mean()
        y = a[i0 + k : i1 + k] - a[i0 + k : i1 + k].mean()
        den = np.sqrt((x * x).sum() * (y * y).sum())
        out[k] = float((x * y).sum() / den) if den > 1e-12 else 0.0
    return out


class MotionEnvelopeScorer:
    """Weight-free fallback: mouth-region motion vs audio envelope change."""

    method = METHOD_FALLBACK

    def __init__(self, cfg: SyncConfig | None = None) -> None:
        self.cfg = cfg or SyncConfig()

    def score(
        self, frames: np.ndarray, audio: np.ndarray, fps: float = 25.0, sample_rate: int = 16000
    ) -> SyncResult:
        frames, audio = _check_inputs(frames, audio)
        m = self.method
        t = len(frames)
        if t < 3:
            return _invalid(m, f"clip too short ({t} frames)", 0)
        if audio.size == 0:
            return _invalid(m, "no audio", 0)
        motion = mouth_motion(frames)  # (T-1,), change into frame t
        env = audio_envelope(audio, t, fps, sample_rate)
        aud = np.abs(np.diff(env))  # (T-1,), change into frame t
        n = min(motion.size, aud.size)
        motion, aud = motion[:n], aud[:n]
        if np.ptp(motion) < 1e-3:
            return _invalid(m, "no mouth-region motion", n)
        if np.ptp(env) < 1e-6 or np.ptp(aud) < 1e-9:
            return _invalid(m, "silent or constant audio", n)
        # Search range in video frames; a lag is used only if enough frames overlap.
        min_overlap = max(12, n // 2)
        max_lag = min(self.cfg.search_frames, n - min_overlap)
        if max_lag < 1:
            return _invalid(m, f"clip too short for the offset search ({t} frames)", n)
        corr = lagged_ncc(_highpass(motion), _highpass(aud), max_lag, min_overlap)
        ks = np.array(sorted(corr))
        cs = np.array([corr[k] for k in ks])
        best = int(np.argmax(cs))
        note = None
        if max_lag < self.cfg.search_frames:
            note = f"short clip: offsets searched over ±{max_lag} frames only"
        return SyncResult(
            offset_frames=int(-ks[best]),
            confidence=float(cs[best] - np.median(cs)),
            min_distance=None,
            method=m,
            n_windows=int(n),
            valid=True,
            note=note,
        )


# --------------------------------------------------------------------------- SyncNet


class SyncNetScorer:
    """SyncNet v2 offset/confidence, CPU or GPU, no_grad, batched."""

    method = METHOD_SYNCNET

    def __init__(self, model, cfg: SyncConfig | None = None) -> None:
        self.cfg = cfg or SyncConfig()
        self.model = model.eval()
        self.device = self.cfg.device

    # The embedding step is a separate method so that it can be replaced
    # (tests, or a different face-crop convention) without touching the search.
    def embed(self, frames: np.ndarray, audio: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:  # noqa: F821
        """25 fps RGB frames + 16 kHz float audio -> (video_emb, audio_emb), both ``(N, 1024)``.

        ``N`` = number of 5-frame windows (``min(T, len(audio) // 640) - 5``
        as in the original, bounded by the available MFCC columns).
        """
        import torch

        from . import syncnet as sn

        mfcc = sn.mfcc_psf(np.clip(audio, -1.0, 1.0) * 32768.0, sn.SYNCNET_SAMPLE_RATE)
        n = _n_windows(len(frames), audio.size, mfcc.shape[1])
        if n < 1:
            return torch.zeros(0, sn.EMBEDDING_DIM), torch.zeros(0, sn.EMBEDDING_DIM)
        bs = max(1, int(self.cfg.batch_size))
        dev = torch.device(self.device)
        vid, aud = [], []
        with torch.no_grad():
            for s in range(0, n, bs):
                e = min(n, s + bs)
                lip = sn.lip_input_from_face_crop(frames[s : e + sn.FRAMES_PER_WINDOW - 1], self.cfg.face_crop_scale)
                x = torch.from_numpy(lip).permute(1, 0, 2, 3).unsqueeze(0).to(dev)  # (1,3,T,224,224)
                vid.append(self.model.lip_features(x).cpu())
                blocks = np.stack(
                    [mfcc[:, sn.MFCC_PER_VIDEO_FRAME * i : sn.MFCC_PER_VIDEO_FRAME * i + sn.MFCC_PER_WINDOW] for i in range(s, e)]
                )
                aud.append(self.model.forward_aud(torch.from_numpy(blocks[:, None]).to(dev)).cpu())
        return torch.cat(vid), torch.cat(aud)

    def score(
        self, frames: np.ndarray, audio: np.ndarray, fps: float = 25.0, sample_rate: int = 16000
    ) -> SyncResult:
        from . import syncnet as sn

        frames, audio = _check_inputs(frames, audio)
        frames = _to_25fps(frames, fps, sn.SYNCNET_FPS)
        audio = _resample_audio(audio, sample_rate, sn.SYNCNET_SAMPLE_RATE)
        v, a = self.embed(frames, audio)
        n = min(len(v), len(a))
        if n < 1:
            return _invalid(
                self.method,
                f"clip too short for SyncNet ({len(frames)} frames, {audio.size / sn.SYNCNET_SAMPLE_RATE:.2f} s audio; "
                "needs at least 6 frames of video and audio)",
                0,
            )
        res = sn.offset_search(v[:n], a[:n], int(self.cfg.search_frames))
        note = None
        if n < 2 * self.cfg.search_frames + 1:
            note = f"short clip: {n} windows for ±{self.cfg.search_frames} shifts (zero-padded as the original)"
        return SyncResult(
            offset_frames=res.offset,
            confidence=res.confidence,
            min_distance=res.min_distance,
            method=self.method,
            n_windows=int(n),
            valid=True,
            note=note,
        )


def _n_windows(n_frames: int, n_samples: int, n_mfcc: int) -> int:
    min_length = min(n_frames, n_samples // 640)
    n = min_length - 5
    n = min(n, (n_mfcc - 20) // 4 + 1)
    return max(n, 0)


def build_sync_scorer(cfg: SyncConfig, weights_path: str | os.PathLike | None = None) -> SyncScorer:
    """SyncNet v2 when ``weights_path`` is given (errors if the file is bad), else the fallback."""
    if weights_path is None or str(weights_path) == "":
        return MotionEnvelopeScorer(cfg)
    from .syncnet import load_syncnet_v2

    model = load_syncnet_v2(weights_path, device=cfg.device)
    return SyncNetScorer(model, cfg)
