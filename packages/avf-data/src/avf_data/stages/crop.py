"""Stage 4: RetinaFace tracking and a stable, smoothed face crop per clip.

RetinaFace (MobileNet-0.25, ONNX, shipped with avf-data) runs on every ``detect_every``-th frame, downscaled to
``detect_width``; face centres and sizes are linearly interpolated in between and the
centres are smoothed with a Savitzky-Golay filter. One square window per clip is sized from
the largest face across its frames times ``margin``, so the crop scale never "breathes".

Close-ups are the rule in talking-face video (a face filling a 512 px frame, as in many
public corpora): the window then shrinks to the frame's short side (never below
``min_margin`` x face) and slides to stay inside the frame, instead of being padded with
invented pixels or the clip being thrown away. Only a window that still leaves the frame by
more than ``max_outside`` of its area (the face itself cut by the border) rejects the clip.

:func:`plan_track` turns detections into per-frame windows; the pipeline cuts them from the
face regions kept while streaming (:mod:`avf_data.chunks`), :func:`crop_clip` from frames in
memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..chunks import Face, pick_face
from .base import Part, Span, Stage
from .retinaface import detect_faces, load_retinaface


@dataclass
class CropConfig:
    """mode: off (no detector: a centre square of the frame) | measure (a clip whose face track
        fails keeps a centre-square crop and a flag) | enforce.
    detect_every: run RetinaFace on every n-th frame, interpolate between.
    detect_width: frames are downscaled to this width for detection (0 = as decoded).
    score_threshold: RetinaFace confidence threshold.
    margin: crop side = largest face side over the clip x margin ...
    min_margin: ... but at most the frame's short side, and never less than face x min_margin.
    out_size: side of the output crop in pixels (even).
    savgol_window / savgol_order: Savitzky-Golay smoothing of the centre track (frames).
    max_missing: reject the clip when more than this fraction of detections find no face.
    second_face_ratio: a second face at least this large (relative side) rejects the clip
        as "several faces" (0 disables).
    max_outside: reject when the crop window lies outside the frame by more than this
        fraction of its area on some frame (the outside repeats the edge pixels).
    region_size / region_factor: while streaming, a square of region_factor x face side
        around the face is kept per frame at most region_size px; crops are cut from it.
        region_size 320 keeps a 224 px SyncNet crop (1.4 x face) close to source sharpness.
    """

    mode: str = "enforce"
    detect_every: int = 5
    detect_width: int = 320
    score_threshold: float = 0.8
    margin: float = 1.8
    min_margin: float = 1.15
    out_size: int = 160
    savgol_window: int = 13
    savgol_order: int = 2
    max_missing: float = 0.34
    second_face_ratio: float = 0.6
    max_outside: float = 0.35
    region_size: int = 320
    region_factor: float = 2.6


@dataclass
class Track:
    """The face track of one clip: per-frame windows and face boxes (source px)."""

    reason: str | None
    code: str | None = None
    windows: np.ndarray | None = None  # (T, 4) x0, y0, x1, y1 of the crop window
    face_boxes: np.ndarray | None = None  # (T, 4) interpolated detected face box
    det_frames: list[int] = field(default_factory=list)  # clip-relative detection frames
    det_scores: list[float] = field(default_factory=list)  # RetinaFace score (0 = none found)
    face_side: float = 0.0
    outside: float = 0.0  # worst fraction of the window outside the frame


@dataclass
class CropResult:
    reason: str | None
    frames: np.ndarray | None = None  # (T, out, out, 3) uint8
    boxes: list[list[float]] = field(default_factory=list)  # per frame window [x0, y0, x1, y1]
    det_frames: list[int] = field(default_factory=list)
    det_scores: list[float] = field(default_factory=list)
    face_side: float = 0.0
    code: str | None = None


def savgol(x: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay smoothing of ``x`` as ``scipy.signal.savgol_filter(x, window, order,
    mode="interp")`` computes it (least-squares polynomial per window; the first and last half
    windows from the polynomial fitted to the first and last window), in numpy: importing
    scipy.signal costs ~1.5 CPU-s, most of what a build spent before its first frame."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    w = min(window, n if n % 2 else n - 1)
    if w < 3 or w <= order:
        return x
    half = w // 2
    t = np.arange(w, dtype=np.float64)
    coeffs = np.linalg.pinv(np.vander(t - half, order + 1, increasing=True))[0]  # the fit's value at the centre
    y = np.empty(n)
    y[half : n - half] = np.convolve(x, coeffs[::-1], mode="valid")
    y[:half] = np.polyval(np.polyfit(t, x[:w], order), t[:half])
    y[n - half :] = np.polyval(np.polyfit(t, x[n - w :], order), t[w - half :])
    return y


def plan_track(
    t_len: int, detections: dict[int, list[Face]], width: int, height: int, cfg: CropConfig | None = None
) -> Track:
    """Per-frame crop windows for a clip of ``t_len`` frames from RetinaFace ``detections``
    (clip-relative frame -> faces in source px) in a ``width x height`` picture."""
    cfg = cfg or CropConfig()
    idx = sorted(i for i in detections if 0 <= i < t_len)
    track = Track(reason=None, det_frames=idx)
    if not idx:
        track.reason, track.code = "no RetinaFace detection in the clip", "crop.lost"
        return track
    xs, boxes, track.det_scores, many = _follow_face(idx, detections, cfg.second_face_ratio)
    missing = 1 - len(xs) / len(idx)
    if not xs or missing > cfg.max_missing:
        track.reason, track.code = f"face lost in {missing:.0%} of RetinaFace detections", "crop.lost"
    elif many > len(idx) * cfg.max_missing:
        track.reason, track.code = f"several faces in {many}/{len(idx)} RetinaFace detections", "crop.several"
    else:
        _place_windows(track, t_len, xs, np.asarray(boxes), width, height, cfg)
    return track


def _follow_face(
    idx: list[int], detections: dict[int, list[Face]], second_face_ratio: float
) -> tuple[list[int], list[list[float]], list[float], int]:
    """Follow one face through the detection frames ``idx``: the frames where it was found, its
    boxes there, every frame's score (0 = no face) and how many frames held a second face large
    enough to matter. Tracking by nearest centre keeps a passer-by from swapping the subject."""
    xs: list[int] = []
    boxes: list[list[float]] = []
    scores: list[float] = []
    prev = None
    many = 0
    for i in idx:
        faces = detections[i]
        f = pick_face(faces, prev)
        if f is None:
            scores.append(0.0)
            continue
        if second_face_ratio > 0 and any(g is not f and g.side >= second_face_ratio * f.side for g in faces):
            many += 1
        prev = f.centre
        xs.append(i)
        boxes.append(f.box())
        scores.append(round(float(f.score), 4))
    return xs, boxes, scores, many


def _place_windows(
    track: Track, t_len: int, xs: list[int], b: np.ndarray, width: int, height: int, cfg: CropConfig
) -> None:
    """Fill ``track`` with one fixed-size window per frame, centred on the interpolated and
    smoothed face boxes ``b`` (found at frames ``xs``) and slid into the picture where it fits;
    a window that still leaves the picture too far rejects the clip (``crop.edge``)."""
    t = np.arange(t_len)
    face_boxes = np.stack([np.interp(t, xs, b[:, j]) for j in range(4)], axis=1)
    cx = savgol((face_boxes[:, 0] + face_boxes[:, 2]) / 2, cfg.savgol_window, cfg.savgol_order)
    cy = savgol((face_boxes[:, 1] + face_boxes[:, 3]) / 2, cfg.savgol_window, cfg.savgol_order)
    face_side = float(np.max(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
    win = max(8.0, max(min(face_side * cfg.margin, float(min(width, height))), face_side * cfg.min_margin))
    # slide the window into the frame where it fits (a close-up's face is not re-centred
    # onto invented border pixels)
    if win <= width:
        cx = np.clip(cx, win / 2, width - win / 2)
    if win <= height:
        cy = np.clip(cy, win / 2, height - win / 2)
    x0, y0 = cx - win / 2, cy - win / 2
    windows = np.stack([x0, y0, x0 + win, y0 + win], axis=1)
    ix = np.clip(windows[:, 2], 0, width) - np.clip(windows[:, 0], 0, width)
    iy = np.clip(windows[:, 3], 0, height) - np.clip(windows[:, 1], 0, height)
    outside = float(np.max(1 - ix * iy / (win * win)))
    track.face_side, track.outside = round(face_side, 2), outside
    track.windows, track.face_boxes = windows, face_boxes
    if ix.min() <= 0 or iy.min() <= 0:
        track.reason, track.code = "crop window left the frame", "crop.edge"
    elif outside > cfg.max_outside:
        track.reason = f"face too close to the frame edge ({outside:.0%} of the crop outside)"
        track.code = "crop.edge"


def crop_clip(frames: np.ndarray, cfg: CropConfig | None = None) -> CropResult:
    """Track the face over in-memory ``frames`` (T, H, W, 3) and return the stable square
    crops (tests and tools; the pipeline streams, see :mod:`avf_data.chunks`)."""
    from ..chunks import cut_rect

    cfg = cfg or CropConfig()
    t_len, h, w = frames.shape[:3]
    idx = list(range(0, t_len, max(1, cfg.detect_every)))
    s = cfg.detect_width / w if cfg.detect_width and w > cfg.detect_width else 1.0
    detections: dict[int, list[Face]] = {}
    for i in idx:
        img = (
            frames[i]
            if s == 1.0
            else cv2.resize(frames[i], (cfg.detect_width, int(round(h * s))), interpolation=cv2.INTER_AREA)
        )
        detections[i] = [
            Face(f.x / s, f.y / s, (f.x + f.width) / s, (f.y + f.height) / s, float(f.score))
            for f in detect_faces([img], cfg.score_threshold)[0]
        ]
    track = plan_track(t_len, detections, w, h, cfg)
    res = CropResult(
        reason=track.reason,
        code=track.code,
        det_frames=track.det_frames,
        det_scores=track.det_scores,
        face_side=track.face_side,
    )
    if track.reason:
        return res
    assert track.windows is not None
    out = np.empty((t_len, cfg.out_size, cfg.out_size, 3), np.uint8)
    for k in range(t_len):
        x0, y0, x1, y1 = track.windows[k]
        out[k] = cut_rect(
            lambda a, b, c, d, ww, hh, k=k: cv2.resize(frames[k, b:d, a:c], (ww, hh), interpolation=cv2.INTER_AREA),
            w,
            h,
            x0,
            y0,
            x1,
            y1,
            cfg.out_size,
            cfg.out_size,
            None,
        )
    res.frames = out
    res.boxes = [[round(float(v), 1) for v in box] for box in track.windows]
    return res


class CropStage(Stage):
    """Stage 4: RetinaFace track, Savitzky-Golay centre, one window per clip, cut at out_size.
    ``off`` (and ``import --no-curate``) cuts a fixed centre square instead: later stages and
    the shard need a crop, so this stage runs in every mode."""

    name = "crop"
    summary = (
        "RetinaFace every 5th frame (interpolated), Savitzky-Golay smoothed centre, one window per "
        "clip from the largest face x margin (kept inside the frame)"
    )
    Config = CropConfig
    codes = {
        "crop.lost": "RetinaFace lost the face in too many detections",
        "crop.several": "a second face as large as second_face_ratio of the main one",
        "crop.edge": "the face is cut by the frame border (the window cannot stay inside)",
    }
    runs_when_off = True

    @classmethod
    def preload(cls) -> None:
        load_retinaface()  # the ONNX session: ~0.2 s

    def run(self, span: Span, chunk) -> list[Part]:
        if self.mode == "off":
            return [self._centre(span, chunk)]
        dets = {k - span.start: chunk.faces[k] for k in chunk.faces if span.start <= k < span.end}
        track = plan_track(span.length, dets, chunk.source.width, chunk.source.height, self.cfg)
        meta = {
            "detector": {
                "retinaface_frames": [span.start + chunk.start_frame + i for i in track.det_frames],
                "retinaface_scores": track.det_scores,
            }
        }
        if track.reason:
            if self.mode == "enforce":
                return [Part(span.start, span.end, track.code, track.reason, meta=meta)]
            part = self._centre(span, chunk)
            part.code, part.detail = track.code, track.reason
            return [part]
        assert track.windows is not None and track.face_boxes is not None
        size = self.cfg.out_size
        frames = np.empty((span.length, size, size, 3), np.uint8)
        for i in range(span.length):
            frames[i] = chunk.regions.cut(span.start + i, *track.windows[i], size, size)
        meta.update(
            {
                "boxes": _round_boxes(track.windows),
                "face_boxes": _round_boxes(track.face_boxes),
                "face_side": round(track.face_side, 1),
                "crop_outside": round(track.outside, 4),
            }
        )
        return [Part(span.start, span.end, meta=meta, data={"crop": frames, "face_boxes": track.face_boxes})]

    def _centre(self, span: Span, chunk) -> Part:
        """A fixed centre square of the frame (no detector)."""
        info = chunk.source
        side = float(min(info.width, info.height))
        x0, y0 = (info.width - side) / 2, (info.height - side) / 2
        size = self.cfg.out_size
        frames = np.stack(
            [chunk.regions.cut(k, x0, y0, x0 + side, y0 + side, size, size) for k in range(span.start, span.end)]
        )
        box = [round(x0, 1), round(y0, 1), round(x0 + side, 1), round(y0 + side, 1)]
        boxes = np.tile(np.asarray(box, np.float64), (span.length, 1))
        return Part(
            span.start,
            span.end,
            meta={"boxes": [box] * span.length, "face_side": None},
            data={"crop": frames, "face_boxes": boxes},
        )


def _round_boxes(boxes: np.ndarray) -> list[list[float]]:
    return np.round(np.asarray(boxes, np.float64), 1).tolist()
