"""Stage 2: dlib HOG face check on sampled frames of each scene segment, decided per moment.

Frames are sampled evenly over the segment (``num_samples``, and one at least every
``max_gap_seconds``). A moment with several faces is cut out of the segment, so a shot that
shows one talking face and then adds more (panels, a second speaker walking in) without a
cut keeps its single-face stretch: when a sample shows several faces, the segment is sampled
every ``resolution_seconds`` and every frame within ``several_margin_seconds`` of a sample
with several faces is rejected. The margin is there because HOG often misses one of two faces
(on the demo's two-face video it saw both in 16 of 23 samples), and a clip should not start
where a second face is about to appear. Each remaining stretch is judged on its samples: it is
rejected when most show no face, or when the face is tiny, cut by the frame border or only
weakly detected (the HOG detector scores distorted, blurred or strongly rotated faces low). A
kept stretch shorter than ``min_seconds`` goes with its neighbour.
"""

from __future__ import annotations

import itertools
import math
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
    max_gap_seconds: at least one sampled frame every this many seconds.
    resolution_seconds: a segment with several faces somewhere is sampled this densely.
    several_margin_seconds: frames this close to a sample with several faces are rejected.
    min_seconds: a single-face stretch shorter than this is not kept on its own.
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
    max_gap_seconds: float = 2.0
    resolution_seconds: float = 0.2
    several_margin_seconds: float = 0.5
    min_seconds: float = 1.0


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


@dataclass
class FaceSample:
    """What dlib found on one sampled frame: ``label`` is ok / none / many / tiny / border / weak."""

    frame: int
    label: str
    score: float  # best dlib score (nan: no face)
    count: int  # faces found


def sample_frame(image: np.ndarray, frame: int, cfg: FaceFilterConfig) -> FaceSample:
    """dlib on one frame: without upsampling first (4x cheaper; finds the ~80 px+ faces of
    talking heads), then with ``cfg.upsample`` when that finds nothing (small faces, down to
    ~40 px at upsample 1)."""
    det = get_dlib_detector()
    h, w = image.shape[:2]
    if cfg.detect_width and w > cfg.detect_width:
        s = cfg.detect_width / w
        image = cv2.resize(image, (cfg.detect_width, int(round(h * s))), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    rects, rscores, _ = det.run(gray, 0, cfg.threshold)
    if not rects and cfg.upsample > 0:
        rects, rscores, _ = det.run(gray, cfg.upsample, cfg.threshold)
    if not rects:
        return FaceSample(frame, "none", float("nan"), 0)
    best = int(np.argmax(rscores))
    score = float(rscores[best])
    if len(rects) > cfg.max_faces:
        return FaceSample(frame, "many", score, len(rects))
    r = rect = rects[best]
    fh, fw = gray.shape[:2]
    side = max(r.width(), r.height())
    margin = cfg.border_margin * side
    if side < cfg.min_face_fraction * min(fh, fw):
        label = "tiny"
    elif rect.left() < -margin or rect.top() < -margin or rect.right() > fw + margin or rect.bottom() > fh + margin:
        label = "border"
    else:
        label = "weak" if score < cfg.good_score else "ok"
    return FaceSample(frame, label, score, len(rects))


def verdict(samples: list[FaceSample], cfg: FaceFilterConfig) -> FaceCheck:
    """One stretch judged on its samples (``reason`` None: kept)."""
    labels = [x.label for x in samples]
    scores, counts = [x.score for x in samples], [x.count for x in samples]
    n = len(labels)
    need = cfg.min_hit_fraction * n
    if "many" in labels:
        return FaceCheck(f"several faces ({max(counts)} in a sampled frame)", "face.several", scores, counts)
    if labels.count("ok") >= need:
        return FaceCheck(None, None, scores, counts)
    if labels.count("none") > n - need:
        return FaceCheck(f"no face in {labels.count('none')}/{n} sampled frames", "face.none", scores, counts)
    for key, text in (
        ("tiny", "tiny face"),
        ("border", "face cut by the frame border"),
        ("weak", "distorted or unclear face (low detector score)"),
    ):
        if labels.count(key):
            return FaceCheck(f"{text} in {labels.count(key)}/{n} sampled frames", f"face.{key}", scores, counts)
    return FaceCheck("face not found consistently", "face.inconsistent", scores, counts)


def check_faces(frames, start: int, end: int, cfg: FaceFilterConfig | None = None) -> FaceCheck:
    """The whole of ``frames[start:end]`` judged on ``num_samples`` evenly sampled frames
    (``reason`` None: accepted). ``frames`` is anything indexable by frame number (an array,
    or the pipeline's nearest-analysis-frame lookup)."""
    cfg = cfg or FaceFilterConfig()
    return verdict([sample_frame(frames[i], i, cfg) for i in sample_indices(start, end, cfg.num_samples)], cfg)


@dataclass
class FaceStretch:
    """A stretch ``[start, end)`` of a segment and its verdict."""

    start: int
    end: int
    check: FaceCheck


def face_stretches(frames, start: int, end: int, fps: float, cfg: FaceFilterConfig | None = None) -> list[FaceStretch]:
    """``[start, end)`` cut around the moments with several faces, each stretch judged on its
    samples (see module doc); the stretches cover the segment in order."""
    cfg = cfg or FaceFilterConfig()
    n = max(cfg.num_samples, math.ceil((end - start) / max(1.0, cfg.max_gap_seconds * fps)))
    samples = [sample_frame(frames[i], i, cfg) for i in sample_indices(start, end, n)]
    if not any(x.label == "many" for x in samples):
        return _absorb_short([FaceStretch(start, end, verdict(samples, cfg))], round(cfg.min_seconds * fps))
    step = max(1, round(cfg.resolution_seconds * fps))
    seen = {x.frame: x for x in samples}
    dense = [seen.get(k) or sample_frame(frames[k], k, cfg) for k in range(start + step // 2, end, step)]
    several = np.zeros(end - start, bool)
    margin = round(cfg.several_margin_seconds * fps)
    for x in dense:
        if x.label == "many":
            several[max(0, x.frame - margin - start) : x.frame + margin + 1 - start] = True
    stretches = []
    for flag, run in itertools.groupby(range(end - start), key=lambda i: bool(several[i])):
        idx = list(run)
        a, b = start + idx[0], start + idx[-1] + 1
        inside = [x for x in dense if a <= x.frame < b] or [sample_frame(frames[(a + b) // 2], (a + b) // 2, cfg)]
        check = verdict([x for x in inside if x.label == "many"], cfg) if flag else verdict(inside, cfg)
        stretches.append(FaceStretch(a, b, check))
    return _absorb_short(stretches, max(1, round(cfg.min_seconds * fps)))


def _absorb_short(stretches: list[FaceStretch], min_frames: int) -> list[FaceStretch]:
    """A kept stretch too short for a clip joins the verdict of its longer neighbour; then
    neighbours with the same verdict merge."""
    for i, st in enumerate(stretches):
        if st.check.code is None and st.end - st.start < min_frames and len(stretches) > 1:
            neighbours = [stretches[j] for j in (i - 1, i + 1) if 0 <= j < len(stretches)]
            donor = max(neighbours, key=lambda x: x.end - x.start)
            st.check = FaceCheck(donor.check.reason, donor.check.code, st.check.scores, st.check.counts)
    merged: list[FaceStretch] = []
    for st in stretches:
        if merged and merged[-1].check.code == st.check.code:
            prev = merged[-1]
            check = FaceCheck(
                prev.check.reason,
                prev.check.code,
                prev.check.scores + st.check.scores,
                prev.check.counts + st.check.counts,
            )
            merged[-1] = FaceStretch(prev.start, st.end, check)
        else:
            merged.append(st)
    return merged


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
        stretches = face_stretches(_Nearest(chunk), span.start, span.end, chunk.fps, self.cfg)
        if self.mode != "enforce":  # measure: the span whole, flagged when a stretch of it fails
            failing = next((st.check for st in stretches if st.check.code), FaceCheck(None))
            scores = _clean([v for st in stretches for v in st.check.scores])
            return [Part(span.start, span.end, failing.code, failing.reason, meta={"dlib_scores": scores})]
        parts = []
        for st in stretches:
            scores = _clean(st.check.scores)
            meta = {"dlib_scores": scores}
            parts.append(Part(st.start, st.end, st.check.code, st.check.reason, meta=meta, row=meta))
        return parts
