"""Stage 2: dlib HOG face check on a few sampled frames of each scene segment.

A segment is rejected when most sampled frames show no face, when any sampled frame shows
several faces, or when the face is tiny, cut by the frame border or only weakly detected
(the HOG detector scores distorted, blurred or strongly rotated faces low).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .base import Part, Span, Stage


@dataclass
class FaceFilterConfig:
    """mode: off | measure (scores recorded, nothing dropped) | enforce.
    num_samples: frames sampled evenly inside the segment.
    upsample: dlib upsampling steps (1 finds faces down to ~40 px; 0 only ~80 px).
    detect_width: frames are resized to this width before detection (0 = as decoded).
    threshold: dlib detection score threshold (0 is dlib's default; higher = stricter).
    good_score: the best face must reach this score in enough frames, else "distorted".
    max_faces: more simultaneous faces than this in a sampled frame rejects the segment.
    min_face_fraction: face side / frame short side below this = "tiny face".
    min_hit_fraction: fraction of sampled frames that must contain exactly one face.
    border_margin: faces whose box leaves the frame by more than this fraction of the
        face size are "cut by the frame border".
    """

    mode: str = "enforce"
    num_samples: int = 3
    upsample: int = 1
    detect_width: int = 480
    threshold: float = 0.3
    good_score: float = 0.5
    max_faces: int = 1
    min_face_fraction: float = 0.08
    min_hit_fraction: float = 0.6
    border_margin: float = 0.25


@dataclass
class FaceCheck:
    reason: str | None
    code: str | None = None
    scores: list[float] = field(default_factory=list)  # best dlib score per sampled frame (nan = none)
    counts: list[int] = field(default_factory=list)  # faces found per sampled frame


_DETECTOR = None


def get_dlib_detector():
    global _DETECTOR
    if _DETECTOR is None:
        import dlib

        _DETECTOR = dlib.get_frontal_face_detector()
    return _DETECTOR


def sample_indices(start: int, end: int, n: int) -> list[int]:
    """``n`` frame indices spread evenly inside ``[start, end)`` (centres of n equal parts)."""
    length = end - start
    n = max(1, min(n, length))
    return [start + int((k + 0.5) * length / n) for k in range(n)]


def check_faces(frames, start: int, end: int, cfg: FaceFilterConfig | None = None) -> FaceCheck:
    """Run dlib on sampled frames of ``frames[start:end]``; ``reason`` is None when accepted.
    ``frames`` is anything indexable by frame number (an array, or the pipeline's
    nearest-analysis-frame lookup)."""
    cfg = cfg or FaceFilterConfig()
    det = get_dlib_detector()
    scores: list[float] = []
    counts: list[int] = []
    problems: list[str] = []
    for i in sample_indices(start, end, cfg.num_samples):
        img = frames[i]
        h, w = img.shape[:2]
        s = 1.0
        if cfg.detect_width and w > cfg.detect_width:
            s = cfg.detect_width / w
            img = cv2.resize(img, (cfg.detect_width, int(round(h * s))), interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        # without upsampling first (4x cheaper; finds the ~80 px+ faces of talking heads), then
        # with cfg.upsample when that finds nothing (small faces, down to ~40 px at upsample 1)
        rects, rscores, _ = det.run(gray, 0, cfg.threshold)
        if not rects and cfg.upsample > 0:
            rects, rscores, _ = det.run(gray, cfg.upsample, cfg.threshold)
        counts.append(len(rects))
        if not rects:
            scores.append(float("nan"))
            problems.append("none")
            continue
        best = int(np.argmax(rscores))
        scores.append(float(rscores[best]))
        if len(rects) > cfg.max_faces:
            problems.append("many")
            continue
        r = rects[best]
        fh, fw = img.shape[:2]
        side = max(r.width(), r.height())
        if side < cfg.min_face_fraction * min(fh, fw):
            problems.append("tiny")
        elif (
            r.left() < -cfg.border_margin * side
            or r.top() < -cfg.border_margin * side
            or r.right() > fw + cfg.border_margin * side
            or r.bottom() > fh + cfg.border_margin * side
        ):
            problems.append("border")
        elif rscores[best] < cfg.good_score:
            problems.append("weak")
        else:
            problems.append("ok")
    n = len(problems)
    need = cfg.min_hit_fraction * n
    if problems.count("many"):
        k = max(counts)
        return FaceCheck(f"several faces ({k} in a sampled frame)", "face.several", scores, counts)
    if problems.count("ok") >= need:
        return FaceCheck(None, None, scores, counts)
    if problems.count("none") > n - need:
        return FaceCheck(f"no face in {problems.count('none')}/{n} sampled frames", "face.none", scores, counts)
    for key, text in (
        ("tiny", "tiny face"),
        ("border", "face cut by the frame border"),
        ("weak", "distorted or unclear face (low detector score)"),
    ):
        if problems.count(key):
            return FaceCheck(f"{text} in {problems.count(key)}/{n} sampled frames", f"face.{key}", scores, counts)
    return FaceCheck("face not found consistently", "face.inconsistent", scores, counts)


def _clean(values: list[float]) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 4) for v in values]


class _Nearest:
    """A chunk's analysis frames indexed by any frame number (the nearest detection frame)."""

    def __init__(self, chunk) -> None:
        self.chunk = chunk

    def __getitem__(self, k: int) -> np.ndarray:
        return self.chunk.nearest_analysis(k)


class FaceStage(Stage):
    """Stage 2: dlib HOG on a few frames: no face, several, tiny, cut or distorted faces out.
    dlib sees the analysis frames; its face-size rule is relative to the frame, so it holds."""

    name = "face"
    summary = "dlib HOG on a few frames per segment: no face / several / tiny / distorted"
    Config = FaceFilterConfig
    codes = {
        "face.none": "no face in most sampled frames",
        "face.several": "more than max_faces faces in a sampled frame",
        "face.tiny": "the face is smaller than min_face_fraction of the frame",
        "face.border": "the face is cut by the frame border",
        "face.weak": "the face is only weakly detected (distorted, blurred, turned away)",
        "face.inconsistent": "no single reason, but too few frames with one good face",
    }

    @classmethod
    def preload(cls) -> None:
        get_dlib_detector()  # ~0.3 s to load

    def run(self, span: Span, chunk) -> list[Part]:
        fc = check_faces(_Nearest(chunk), span.start, span.end, self.cfg)
        scores = _clean(fc.scores)
        return [
            Part(span.start, span.end, fc.code, fc.reason, meta={"dlib_scores": scores}, row={"dlib_scores": scores})
        ]
