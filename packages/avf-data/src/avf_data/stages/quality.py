"""Stage 5b: visual quality filter for face-crop clips (paper §4.1: "blur ... filtered out").

Measures, on ``(T, H, W, 3)`` uint8 RGB face crops (any size; measured at a
fixed 160 px reference side so thresholds do not depend on the crop size):

``blur``
    Variance of the Laplacian of the grey image (OpenCV ``CV_64F`` Laplacian,
    3x3 aperture), per sampled frame, **median** over up to 16 evenly spaced
    frames. Sharp face crops give hundreds; a face blurred with a Gaussian of
    sigma >= 1.5 px (at 160 px) gives < 25.
``motion``
    Mean absolute grey-level difference between consecutive frames (0..255
    scale) on a 4x area-downscaled grey image (40x40 at the reference size, so
    pixel noise averages out while mouth/head motion stays), averaged over
    up to 64 evenly spaced pairs of *consecutive* frames. A frozen or
    still-image clip gives ~0 (H.264 re-encoded: < 0.01), a talking head
    about 0.3 or more.
``frozen_fraction``
    Fraction of those consecutive pairs that are (near-)identical (mean
    |difference| < 0.05): catches clips that freeze for a large part even if
    the rest moves.
``contrast``
    Median over the sampled frames of the grey-level standard deviation: a
    flat (near-constant) frame has ~0.

Defaults (:class:`QualityConfig`) and why:

* ``min_blur_variance = 50``: on the 160 px reference the demo face (astronaut
  photo) measures ~450-600 (~150 when upscaled from a 96 px crop), blurred by
  a Gaussian of sigma 1 / 1.5 / 2 px ~60 / ~22 / ~11. 50 keeps soft but
  usable crops and rejects clearly blurred ones. (Variance-of-Laplacian cut-offs of ~100
  are common for full-resolution photos; face crops upscaled from small
  detections are softer, hence lower.)
* ``min_motion = 0.1``: frozen clips re-encoded with H.264 measure < 0.01;
  the demo talking face, where only the mouth moves, 0.3-0.5.
* ``max_frozen_fraction = 0.5``: more than half of the frame transitions
  identical = a stuttering / frozen source.
* ``min_contrast = 5``: a flat frame (std of grey levels < 5 of 255).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .base import Part, Span, Stage

__all__ = ["QualityConfig", "QualityResult", "QualityStage", "measure_quality", "quality_verdict"]

REFERENCE_SIDE = 160
MAX_BLUR_FRAMES = 16
MAX_MOTION_PAIRS = 64
IDENTICAL_PAIR_DIFF = 0.05
MOTION_DOWNSCALE = 4  # motion is measured on a 40x40 (reference/4) grey image


@dataclass
class QualityConfig:
    """mode: off | measure (scores recorded, nothing dropped) | enforce; thresholds above."""

    mode: str = "enforce"
    min_blur_variance: float = 50.0
    min_motion: float = 0.1
    # Extensions (defaulted).
    max_frozen_fraction: float = 0.5
    min_contrast: float = 5.0


@dataclass
class QualityResult:
    blur: float
    motion: float
    # Extensions (defaulted; None = not measured, check skipped).
    frozen_fraction: float | None = None
    contrast: float | None = None
    n_frames: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def _gray_ref(frame: np.ndarray) -> np.ndarray:
    import cv2

    g = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    h, w = g.shape
    side = min(h, w)
    if side != REFERENCE_SIDE and side > 0:
        scale = REFERENCE_SIDE / side
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        g = cv2.resize(g, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
    return g


def measure_quality(frames: np.ndarray) -> QualityResult:
    """Blur, motion, frozen fraction and contrast of a face-crop clip (see module doc)."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim == 3:  # a single frame
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(frames, 0, 255).astype(np.uint8)
    t = len(frames)
    if t == 0:
        return QualityResult(blur=0.0, motion=0.0, frozen_fraction=None, contrast=0.0, n_frames=0)

    idx = np.unique(np.linspace(0, t - 1, min(t, MAX_BLUR_FRAMES)).round().astype(int))
    blurs, contrasts = [], []
    for i in idx:
        g = _gray_ref(frames[i])
        blurs.append(float(cv2.Laplacian(g, cv2.CV_64F).var()))
        contrasts.append(float(g.std()))

    if t >= 2:
        starts = np.unique(np.linspace(0, t - 2, min(t - 1, MAX_MOTION_PAIRS)).round().astype(int))
        cache: dict[int, np.ndarray] = {}

        def gray(i: int) -> np.ndarray:
            if i not in cache:
                g = _gray_ref(frames[i]).astype(np.float32)
                small = (max(1, g.shape[1] // MOTION_DOWNSCALE), max(1, g.shape[0] // MOTION_DOWNSCALE))
                cache[i] = cv2.resize(g, small, interpolation=cv2.INTER_AREA)
            return cache[i]

        diffs = np.array([float(np.abs(gray(i + 1) - gray(i)).mean()) for i in starts])
        motion = float(diffs.mean())
        frozen = float((diffs < IDENTICAL_PAIR_DIFF).mean())
    else:
        motion, frozen = 0.0, None

    return QualityResult(
        blur=float(np.median(blurs)),
        motion=motion,
        frozen_fraction=frozen,
        contrast=float(np.median(contrasts)),
        n_frames=t,
    )


def quality_verdict(result: QualityResult, cfg: QualityConfig) -> tuple[str, str] | None:
    """``None`` keeps the clip; otherwise ``(code, reason)`` of the first failing check."""
    if result.contrast is not None and result.contrast < cfg.min_contrast:
        return "quality.flat", f"flat video: grey-level std {result.contrast:.1f} < {cfg.min_contrast:g}"
    if result.blur < cfg.min_blur_variance:
        return "quality.blur", f"blurry: variance of Laplacian {result.blur:.1f} < {cfg.min_blur_variance:g}"
    if result.n_frames == 1:
        return "quality.frozen", "frozen video: single frame"
    if result.motion < cfg.min_motion:
        return "quality.frozen", f"frozen video: mean frame difference {result.motion:.3f} < {cfg.min_motion:g}"
    if result.frozen_fraction is not None and result.frozen_fraction > cfg.max_frozen_fraction:
        return "quality.frozen", (
            f"frozen video: {100 * result.frozen_fraction:.0f}% of frame transitions identical "
            f"(> {100 * cfg.max_frozen_fraction:.0f}%)"
        )
    return None


class QualityStage(Stage):
    """Stage 5b: blurred, frozen and flat video out (on the face crop)."""

    name = "quality"
    summary = "blur / frozen / flat video"
    Config = QualityConfig
    codes = {
        "quality.blur": "variance of the Laplacian below min_blur_variance",
        "quality.frozen": "too little motion, or too many identical frame transitions",
        "quality.flat": "grey-level contrast below min_contrast",
    }

    def run(self, span: Span, chunk) -> list[Part]:
        q = measure_quality(span.data["crop"])
        code, reason = quality_verdict(q, self.cfg) or (None, None)
        meta = {"blur": round(float(q.blur), 3), "motion": round(float(q.motion), 4)}
        return [Part(span.start, span.end, code, reason, meta=meta, row={"blur": meta["blur"]})]
