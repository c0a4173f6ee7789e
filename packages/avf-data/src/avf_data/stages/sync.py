"""Stage 5a: audio-visual synchronisation check (paper §4.1, stage 5).

Two scorers return the same :class:`SyncResult`:

``SyncNetScorer`` (``method = "syncnet_v2"``)
    The SyncNet v2 network (:mod:`avf_data.stages.syncnet`) with the official
    ``syncnet_v2.model`` weights, used when a weights path is given. Offset
    search over ``±search_frames`` video frames exactly as the original
    ``SyncNetInstance.evaluate``: mean Euclidean embedding distance per shift,
    ``offset = argmin`` in SyncNet's sign convention, ``confidence = median -
    min`` of the per-shift mean distances, ``min_distance`` = that minimum.
    Its input: :meth:`SyncNetScorer.score_clip` cuts the reference pipeline's
    crop from source-resolution frames by the clip's face boxes
    (:mod:`avf_data.stages.syncnet_input`; equal to a transcription of the
    reference code, ``tests/data/test_sync_reference.py``); without face boxes
    it rebuilds the window from the 160 px training crop and says so in
    ``note``. Weights: argument, ``sync.weights``, or ``AVF_SYNCNET_WEIGHTS``
    (:func:`resolve_weights`); the authors' ``syncnet_v2.model`` comes with
    joonson/syncnet_python (``download_model.sh``, about 52 MiB).

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

import functools
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .base import Part, Span, Stage

__all__ = [
    "SyncConfig",
    "SyncResult",
    "SyncStage",
    "SyncScorer",
    "SyncView",
    "SyncInput",
    "MotionEnvelopeScorer",
    "SyncNetScorer",
    "build_sync_scorer",
    "resolve_weights",
    "reference_input",
    "sync_reject_reason",
    "sync_reject_code",
    "METHOD_SYNCNET",
    "METHOD_FALLBACK",
    "ENV_WEIGHTS",
]

METHOD_SYNCNET = "syncnet_v2"
METHOD_FALLBACK = "fallback_motion_envelope"
ENV_WEIGHTS = "AVF_SYNCNET_WEIGHTS"


@dataclass
class SyncConfig:
    """Thresholds and SyncNet runtime options (YAML section ``sync``).

    max_offset_frames, min_confidence_*: the rejection rule, see the module
    docstring for where the defaults come from.
    search_frames: offsets searched, ±frames (the reference's ``vshift``).
    device: ``cpu`` or ``cuda[:N]`` for SyncNet.
    face_crop_scale: our face-crop side / face-box side; only used when SyncNet
        has to rebuild its window from the 160 px training crop (no face boxes).
    batch_size: SyncNet windows per forward pass (raise on a GPU, e.g. 512).
    weights: path of ``syncnet_v2.model``; ``--syncnet-weights`` wins over it,
        and it wins over the environment variable ``AVF_SYNCNET_WEIGHTS``.
    precision: ``auto`` (fp32 on CPU, bf16 autocast on CUDA), ``fp32`` or ``bf16``.
    calibration: ``auto``: a sync expert's sidecar ``WEIGHTS.json`` (written by ``avf-train
        syncnet``) replaces max_offset_frames, min_confidence_syncnet and input with the values
        measured for those weights; ``config``: this section's values always apply
        (:mod:`avf_data.stages.sync_calibration`).
    input: ``source``: SyncNet sees the reference crop cut from the source video when the clip
        has face boxes and its source is readable (else the training crop); ``crop``: always the
        160 px training crop (an expert trained on crops says so in its sidecar).
    mode: off | measure (scores recorded, nothing dropped) | enforce. Enforcement needs
        SyncNet weights: the weight-free fallback cannot tell sync from no sync on real
        faces, so without weights the stage only measures (unless ``enforce_fallback``).
    require_syncnet: a build without usable SyncNet weights fails at start.
    enforce_fallback: let the weight-free fallback reject clips (demo and synthetic data only).
    """

    mode: str = "enforce"
    require_syncnet: bool = False
    enforce_fallback: bool = False
    max_offset_frames: int = 3
    search_frames: int = 15
    min_confidence_syncnet: float = 3.0
    min_confidence_fallback: float = 0.3
    device: str = "cpu"
    face_crop_scale: float = 1.8
    batch_size: int = 32
    weights: str | None = None
    precision: str = "auto"
    calibration: str = "auto"
    input: str = "source"


@dataclass
class SyncResult:
    offset_frames: int
    confidence: float
    min_distance: float | None
    method: str
    # Extensions (defaulted): number of windows/frames the score is based on,
    # whether the clip could be measured at all, a human-readable note, and
    # (SyncNet) the mean embedding distance per shift k = -search..+search.
    n_windows: int = 0
    valid: bool = True
    note: str | None = None
    mean_dists: list[float] | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["offset_frames"] = int(self.offset_frames)
        d["confidence"] = float(self.confidence)
        d["min_distance"] = None if self.min_distance is None else float(self.min_distance)
        if self.mean_dists is None:
            d.pop("mean_dists")
        else:
            d["mean_dists"] = [round(float(x), 5) for x in self.mean_dists]
        return d


@dataclass
class SyncView:
    """What the pipeline hands a scorer for one clip (see :meth:`SyncScorer.score_clip`).

    crop_frames: (T, 160, 160, 3) uint8 RGB training crops at ``fps``.
    audio: float32 mono in [-1, 1] at ``sample_rate``, ``(L + R) / 2`` for stereo.
    face_boxes: (T, 4) ``[x0, y0, x1, y1]`` per frame in source pixels (raw
        detections interpolated between detection frames), or None.
    cut_region(k, x0, y0, x1, y1, out_w, out_h): frame k's source-pixel
        rectangle, grey 110 outside the frame, resized (see
        :data:`avf_data.stages.syncnet_input.CutRegion`), or None.
    """

    crop_frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    face_boxes: np.ndarray | None = None
    cut_region: Callable[[int, float, float, float, float, int, int], np.ndarray] | None = None


@runtime_checkable
class SyncScorer(Protocol):
    method: str

    def score(
        self, frames: np.ndarray, audio: np.ndarray, fps: float = 25.0, sample_rate: int = 16000
    ) -> SyncResult: ...

    def score_clip(self, view: SyncView) -> SyncResult: ...


def sync_reject_code(result: SyncResult, cfg: SyncConfig) -> str | None:
    """``None`` keeps the clip; otherwise ``sync.unmeasurable``, ``sync.offset`` or
    ``sync.confidence`` (the first rule that fails, in that order)."""
    if not result.valid:
        return "sync.unmeasurable"
    if abs(int(result.offset_frames)) > cfg.max_offset_frames:
        return "sync.offset"
    thr = cfg.min_confidence_syncnet if result.method == METHOD_SYNCNET else cfg.min_confidence_fallback
    if not np.isfinite(result.confidence) or result.confidence < thr:
        return "sync.confidence"
    return None


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
    import cv2

    if frames.dtype == np.uint8:  # OpenCV's integer path: ~10x cheaper than float arithmetic
        return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]).astype(np.float32)
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

    def score(self, frames: np.ndarray, audio: np.ndarray, fps: float = 25.0, sample_rate: int = 16000) -> SyncResult:
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

    def score_clip(self, view: SyncView) -> SyncResult:
        """The fallback works on the training crop; face boxes / source frames are unused."""
        return self.score(view.crop_frames, view.audio, fps=view.fps, sample_rate=view.sample_rate)


# --------------------------------------------------------------------------- SyncNet


@dataclass
class SyncInput:
    """One clip for :meth:`SyncNetScorer.score_many`.

    ``geometry="reference"``: ``frames`` are SyncNet's own 224x224 crops
    (:func:`avf_data.stages.syncnet_input.reference_crops`), 25 fps.
    ``geometry="face_crop"``: ``frames`` are our square training crops; the
    SyncNet window is rebuilt from them (:func:`~avf_data.stages.syncnet.lip_input_from_face_crop`).
    """

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    audio: np.ndarray  # mono float in [-1, 1]
    fps: float = 25.0
    sample_rate: int = 16000
    geometry: str = "reference"
    note: str | None = None


@dataclass
class _Prepared:
    frames: np.ndarray  # (T, 224, 224, 3) uint8 RGB, SyncNet geometry, 25 fps
    mfcc: np.ndarray  # (13, M) float32
    n_windows: int
    n_frames: int
    seconds: float
    note: str | None = None


class SyncNetScorer:
    """SyncNet v2 offset/confidence, CPU or GPU, batched, ``torch.inference_mode``.

    The network runs as :class:`~avf_data.stages.syncnet.SyncNetFast` (2-D
    channels-last convolutions, BatchNorm folded; bf16 autocast on CUDA with
    ``precision="auto"``). Each 5-frame video window and each 20-column MFCC
    block is embedded once; the ``±search_frames`` shifts only pair up the
    stored embeddings. Windows of several clips share a forward pass
    (:meth:`score_many`), so short clips still fill ``batch_size``.

    Audio is rounded to 16-bit integers before the MFCC, as the reference reads
    a ``pcm_s16le`` wav.
    """

    method = METHOD_SYNCNET

    def __init__(self, model, cfg: SyncConfig | None = None) -> None:
        import torch

        from .syncnet import SyncNetFast

        self.cfg = cfg or SyncConfig()
        self.model = model.eval()
        self.device = self.cfg.device
        dev = next(self.model.parameters()).device
        self.fast = SyncNetFast(self.model).to(dev).eval()
        self._bf16 = _use_bf16(self.cfg.precision, dev.type)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True

    # ---- preparation (numpy, CPU)

    def _prepare(self, item: SyncInput) -> _Prepared:
        from . import syncnet as sn
        from .syncnet_input import to_int16

        frames, audio = _check_inputs(item.frames, item.audio)
        audio = _resample_audio(audio, item.sample_rate, sn.SYNCNET_SAMPLE_RATE)
        if item.geometry == "reference":
            if abs(float(item.fps) - sn.SYNCNET_FPS) > 1e-3:
                raise ValueError(f"reference crops must be 25 fps (one per face box), got {item.fps}")
            if frames.shape[1:3] != (sn.SYNCNET_IMAGE_SIZE, sn.SYNCNET_IMAGE_SIZE):
                raise ValueError(f"reference crops must be 224x224, got {frames.shape}")
            lip = np.ascontiguousarray(frames, dtype=np.uint8)
        elif item.geometry == "face_crop":
            frames = _to_25fps(frames, item.fps, sn.SYNCNET_FPS)
            lip = _face_crop_to_lip(frames, self.cfg.face_crop_scale) if len(frames) else frames
        else:
            raise ValueError(f"geometry must be 'reference' or 'face_crop', not {item.geometry!r}")
        mfcc = sn.mfcc_psf(to_int16(audio), sn.SYNCNET_SAMPLE_RATE)
        n = _n_windows(len(lip), audio.size, mfcc.shape[1])
        return _Prepared(lip, mfcc, n, len(lip), audio.size / sn.SYNCNET_SAMPLE_RATE, item.note)

    # ---- embedding (batched over windows of any number of clips)

    def _embed_prepared(self, preps: list[_Prepared]) -> list[tuple[torch.Tensor, torch.Tensor]]:  # noqa: F821
        import torch

        from . import syncnet as sn

        bs = max(1, int(self.cfg.batch_size))
        dev = next(self.fast.parameters()).device
        vid: list[list[torch.Tensor]] = [[] for _ in preps]
        aud: list[list[torch.Tensor]] = [[] for _ in preps]
        # (clip, first window, end window) pieces, packed into batches of <= bs windows
        pieces = [(ci, s, min(p.n_windows, s + bs)) for ci, p in enumerate(preps) for s in range(0, p.n_windows, bs)]
        batch: list[tuple[int, int, int]] = []
        filled = 0

        def run(batch: list[tuple[int, int, int]]) -> None:
            total = sum(e - s for _, s, e in batch)
            x = np.empty((total, sn.SYNCNET_IMAGE_SIZE, sn.SYNCNET_IMAGE_SIZE, 3 * sn.FRAMES_PER_WINDOW), np.float32)
            blocks = np.empty((total, 1, 13, sn.MFCC_PER_WINDOW), np.float32)
            o = 0
            for ci, s, e in batch:
                p = preps[ci]
                sn.fill_lip_windows(p.frames, s, e, x[o : o + e - s])
                for i in range(s, e):
                    c0 = sn.MFCC_PER_VIDEO_FRAME * i
                    blocks[o + i - s, 0] = p.mfcc[:, c0 : c0 + sn.MFCC_PER_WINDOW]
                o += e - s
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).to(dev, non_blocking=True)  # channels-last NCHW
            at = torch.from_numpy(blocks).to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=self._bf16):
                v = self.fast.lip(xt).float().cpu()
                a = self.fast.aud(at).float().cpu()
            o = 0
            for ci, s, e in batch:
                vid[ci].append(v[o : o + e - s])
                aud[ci].append(a[o : o + e - s])
                o += e - s

        with torch.inference_mode():
            for piece in pieces:
                n = piece[2] - piece[1]
                if batch and filled + n > bs:
                    run(batch)
                    batch, filled = [], 0
                batch.append(piece)
                filled += n
            if batch:
                run(batch)
        empty = torch.zeros(0, sn.EMBEDDING_DIM)
        return [(torch.cat(v) if v else empty, torch.cat(a) if a else empty) for v, a in zip(vid, aud, strict=True)]

    def embed(self, frames: np.ndarray, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: F821
        """25 fps RGB face crops + 16 kHz float audio -> (video_emb, audio_emb), both ``(N, 1024)``.

        ``N`` = number of 5-frame windows (``min(T, len(audio) // 640) - 5``
        as in the original, bounded by the available MFCC columns).
        """
        prep = self._prepare(SyncInput(frames, audio, geometry="face_crop"))
        return self._embed_prepared([prep])[0]

    # ---- scoring

    def _result(self, v, a, n_frames: int, seconds: float, note: str | None = None) -> SyncResult:
        from . import syncnet as sn

        n = min(len(v), len(a))
        if n < 1:
            return _invalid(
                self.method,
                f"clip too short for SyncNet ({n_frames} frames, {seconds:.2f} s audio; "
                "needs at least 6 frames of video and audio)",
                0,
            )
        res = sn.offset_search(v[:n], a[:n], int(self.cfg.search_frames))
        notes = [note] if note else []
        if n < 2 * self.cfg.search_frames + 1:
            notes.append(f"short clip: {n} windows for ±{self.cfg.search_frames} shifts (zero-padded as the original)")
        return SyncResult(
            offset_frames=res.offset,
            confidence=res.confidence,
            min_distance=res.min_distance,
            method=self.method,
            n_windows=int(n),
            valid=True,
            note="; ".join(notes) or None,
            mean_dists=[float(d) for d in res.mean_dists],
        )

    def score(self, frames: np.ndarray, audio: np.ndarray, fps: float = 25.0, sample_rate: int = 16000) -> SyncResult:
        """Score our square face crops (SyncNet's window rebuilt from them; see
        :func:`~avf_data.stages.syncnet.lip_input_from_face_crop`)."""
        from . import syncnet as sn

        frames, audio = _check_inputs(frames, audio)
        frames = _to_25fps(frames, fps, sn.SYNCNET_FPS)
        audio = _resample_audio(audio, sample_rate, sn.SYNCNET_SAMPLE_RATE)
        v, a = self.embed(frames, audio)
        return self._result(v, a, len(frames), audio.size / sn.SYNCNET_SAMPLE_RATE)

    def score_reference(
        self, crops: np.ndarray, audio: np.ndarray, sample_rate: int = 16000, note: str | None = None
    ) -> SyncResult:
        """Score SyncNet's own 224x224 crops (25 fps, from
        :func:`~avf_data.stages.syncnet_input.reference_crops`) with mono audio."""
        return self.score_many([SyncInput(crops, audio, 25.0, sample_rate, "reference", note)])[0]

    def embed_many(self, items: list[SyncInput]) -> list[tuple[torch.Tensor, torch.Tensor]]:  # noqa: F821
        """(video, audio) embeddings of each clip, as :meth:`score_many` compares them: for
        callers that pair one clip's video with other audio (a sync expert's calibration,
        benchmarks) without embedding the video again."""
        return self._embed_prepared([self._prepare(it) for it in items])

    def result(self, video_emb, audio_emb, note: str | None = None) -> SyncResult:
        """The offset search and confidence of one pair of embedding sequences (``score_many``'s rule)."""
        n = min(len(video_emb), len(audio_emb))
        return self._result(video_emb, audio_emb, n + 4, (n + 4) / 25.0, note)

    def score_many(self, items: list[SyncInput]) -> list[SyncResult]:
        """Score several clips, their windows sharing forward passes of ``batch_size``."""
        preps = [self._prepare(it) for it in items]
        embs = self._embed_prepared(preps)
        return [self._result(v, a, p.n_frames, p.seconds, p.note) for p, (v, a) in zip(preps, embs, strict=True)]

    def score_clip(self, view: SyncView) -> SyncResult:
        """SyncNet on the reference crops cut from source frames when ``view`` has face
        boxes; otherwise on the training crop (noted in the result)."""
        inp = reference_input(view, use_source=self.cfg.input != "crop")
        if inp.geometry == "face_crop" and inp.note is None:
            inp.note = FALLBACK_GEOMETRY_NOTE if self.cfg.input != "crop" else CROP_INPUT_NOTE
        return self.score_many([inp])[0]


FALLBACK_GEOMETRY_NOTE = "SyncNet input rebuilt from the 160 px training crop (no face boxes / source frames)"
CROP_INPUT_NOTE = "SyncNet input rebuilt from the 160 px training crop (sync.input: crop)"


def reference_input(view: SyncView, use_source: bool = True) -> SyncInput:
    """The :class:`SyncInput` for a clip view: reference crops cut from the source when the
    view has ``face_boxes`` and ``cut_region`` (and ``use_source``), else its training crop."""
    from .syncnet_input import reference_crops

    boxes = getattr(view, "face_boxes", None)
    cut = getattr(view, "cut_region", None)
    fps = float(getattr(view, "fps", 25.0))
    sr = int(getattr(view, "sample_rate", 16000))
    if use_source and boxes is not None and cut is not None and len(boxes) and abs(fps - 25.0) < 1e-3:
        return SyncInput(reference_crops(cut, np.asarray(boxes, dtype=np.float64)), view.audio, 25.0, sr, "reference")
    return SyncInput(view.crop_frames, view.audio, fps, sr, "face_crop")


def _face_crop_to_lip(frames: np.ndarray, face_crop_scale: float) -> np.ndarray:
    """Our square face crops -> SyncNet's window as (T, 224, 224, 3) uint8 RGB."""
    from . import syncnet as sn

    bgr = sn.lip_input_from_face_crop(frames, face_crop_scale)  # (T, 3, 224, 224) float BGR, integer values
    return np.ascontiguousarray(bgr[:, ::-1].transpose(0, 2, 3, 1)).astype(np.uint8)


def _use_bf16(precision: str, device_type: str) -> bool:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"sync.precision must be 'auto', 'fp32' or 'bf16', not {precision!r}")
    if precision == "bf16" and device_type != "cuda":
        raise ValueError("sync.precision 'bf16' needs a CUDA device (CPU runs fp32)")
    return device_type == "cuda" and precision in ("auto", "bf16")


def _n_windows(n_frames: int, n_samples: int, n_mfcc: int) -> int:
    min_length = min(n_frames, n_samples // 640)
    n = min_length - 5
    n = min(n, (n_mfcc - 20) // 4 + 1)
    return max(n, 0)


def resolve_weights(
    weights: str | os.PathLike | None = None, cfg: SyncConfig | None = None, environ: dict[str, str] | None = None
) -> tuple[str | None, str]:
    """Where the SyncNet weights come from: ``(path or None, provenance)``.

    Order: the explicit argument (``--syncnet-weights``), the config key
    ``sync.weights``, the environment variable ``AVF_SYNCNET_WEIGHTS``; none of
    them -> ``(None, "none")`` (the fallback scorer). ``~`` is expanded.
    """
    env = os.environ if environ is None else environ
    for value, source in (
        (weights, "--syncnet-weights"),
        (getattr(cfg, "weights", None), "config sync.weights"),
        (env.get(ENV_WEIGHTS), ENV_WEIGHTS),
    ):
        if value is not None and str(value) != "":
            return os.path.expanduser(os.fspath(value)), source
    return None, "none"


def build_sync_scorer(cfg: SyncConfig, weights_path: str | os.PathLike | None = None) -> SyncScorer:
    """SyncNet v2 when weights are given (argument, ``cfg.weights`` or
    ``AVF_SYNCNET_WEIGHTS``; errors if the file is bad), else the fallback."""
    path, _ = resolve_weights(weights_path, cfg)
    if path is None:
        return MotionEnvelopeScorer(cfg)
    from .syncnet import load_syncnet_v2

    model = load_syncnet_v2(path, device=cfg.device)
    return SyncNetScorer(model, cfg)


class SyncStage(Stage):
    """Stage 5a: audio-visual sync. SyncNet v2 decides when its weights are given; without
    them the weight-free scorer's numbers are recorded as an estimate (``sync_estimate``),
    with no verdict and no flag, because on real faces it cannot tell in-sync audio from
    audio shifted by five frames or from another speaker's (``sync.enforce_fallback`` lets
    it decide anyway, for synthetic data)."""

    name = "sync"
    summary = (
        "SyncNet v2 with weights (--syncnet-weights, sync.weights or AVF_SYNCNET_WEIGHTS); "
        "without weights sync is only MEASURED (weight-free estimate), never enforced"
    )
    Config = SyncConfig
    codes = {
        "sync.offset": "audio and video are more than max_offset_frames apart",
        "sync.confidence": "the scorer's confidence is below its threshold",
        "sync.unmeasurable": "too short, silent or still to measure",
    }

    def __init__(self, cfg: SyncConfig, weights: str | None = None) -> None:
        super().__init__(cfg, weights)
        self.scorer: Any = None
        self.note: str | None = None
        if cfg.mode != "off":
            from .sync_calibration import apply_calibration  # a sync expert's own rule, when it has one

            cfg = self.cfg = apply_calibration(cfg, resolve_weights(weights or None, cfg)[0])[0]
            try:
                self.scorer = build_sync_scorer(cfg, weights or None)
            except ImportError as exc:  # the curation extra without torch: recorded, not fatal
                self.note = f"sync stage unavailable: {exc}"
        method = getattr(self.scorer, "method", None)
        self.decides = method == METHOD_SYNCNET or cfg.enforce_fallback  # its numbers are a verdict
        self.enforced = cfg.mode == "enforce" and self.scorer is not None and self.decides
        self.mode = "off" if cfg.mode == "off" else ("enforce" if self.enforced else "measure")

    def record(self) -> dict[str, Any]:
        methods = [] if self.cfg.mode == "off" else [getattr(self.scorer, "method", "none")]
        return {"sync_methods": methods, "sync_enforced": self.enforced}

    def run(self, span: Span, chunk) -> list[Part]:
        if self.scorer is None:
            return [
                Part(span.start, span.end, meta={"sync": {"method": "none", "note": self.note}, "sync_method": "none"})
            ]
        view = SyncView(
            span.data["crop"],
            chunk.audio_slice(span.start, span.end),
            chunk.fps,
            chunk.sample_rate,
            span.data["face_boxes"],
            functools.partial(_cut_source, chunk.regions, span.start),
        )
        r = self.scorer.score_clip(view)
        sj = r.to_json()
        if not self.decides:
            meta = {"sync_estimate": sj, "sync_method": r.method, "sync_enforced": False}
            return [Part(span.start, span.end, meta=meta, row={"sync_estimate": sj})]
        meta = {
            "sync": sj,
            "sync_offset": sj["offset_frames"],
            "sync_confidence": sj["confidence"],
            "sync_method": r.method,
            "sync_enforced": self.enforced,
        }
        code = sync_reject_code(r, self.cfg)
        reason = sync_reject_reason(r, self.cfg) if code else None
        return [Part(span.start, span.end, code, reason, meta=meta, row={"sync": sj})]


def _cut_source(regions, start: int, k: int, x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> np.ndarray:
    """A source rectangle of clip frame ``k``, grey 110 outside the picture (as the reference
    SyncNet pipeline pads)."""
    return regions.cut(start + k, x0, y0, x1, y1, w, h, fill=110)
