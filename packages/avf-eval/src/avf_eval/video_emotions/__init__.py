"""Emotion prediction for one raw video: avf-data curation -> avf-train checkpoint and test views -> probabilities.

Needs the ``predict`` extra (avf-data, avf-models, avf-train, and through them torch).
"""

from .checkpoint import CheckpointError, DeviceError, LoadedModel, check_device, load_model
from .curate import CuratedClip, CuratedVideo, curate_video
from .run import (
    ClipPrediction,
    NoUsableClipsError,
    VideoPrediction,
    predict_video,
    render_prediction,
)

__all__ = [
    "CheckpointError",
    "ClipPrediction",
    "DeviceError",
    "check_device",
    "CuratedClip",
    "CuratedVideo",
    "LoadedModel",
    "NoUsableClipsError",
    "VideoPrediction",
    "curate_video",
    "load_model",
    "predict_video",
    "render_prediction",
]
