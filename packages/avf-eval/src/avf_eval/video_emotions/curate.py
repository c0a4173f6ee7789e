"""Curate one raw video into face-crop + audio clips with avf-data's stages, in memory.

No stage logic lives here: ``avf_data.pipeline.curate_video`` runs the stages without writing
files (and without thumbnails); this module only picks the configuration and keeps the clips'
time spans.

Stages 1-4 (scene cuts, dlib face check, silence split, RetinaFace crop) are enforced as in
curation. The sync and blur filters of stage 5 are *measured but not enforced*: they keep
unsuitable clips out of pre-training data, but a user asking "what emotion is this?" about a
slightly out-of-sync video still deserves an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CuratedClip:
    """One face-crop clip: RGB frames (T, S, S, 3) uint8 and mono audio, with its time span."""

    key: str
    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    start: float
    end: float


@dataclass(frozen=True)
class CuratedVideo:
    """Accepted clips and the rejected spans (stage, reason, start, end) of one video."""

    clips: tuple[CuratedClip, ...]
    rejects: tuple[dict[str, Any], ...]


def prediction_config() -> Any:
    """avf-data's default curation config with sync/quality reported, not enforced."""
    from avf_data.config import BuildConfig

    return BuildConfig.from_dict({"sync": {"mode": "measure"}, "quality": {"mode": "measure"}})


def _from_sample(sample: Any) -> CuratedClip:
    meta = getattr(sample, "meta", {}) or {}
    return CuratedClip(
        key=str(sample.key),
        frames=sample.frames,
        audio=sample.audio,
        fps=float(sample.fps),
        sample_rate=int(sample.sample_rate),
        start=float(meta.get("start", 0.0)),
        end=float(meta.get("end", len(sample.frames) / float(sample.fps))),
    )


def curate_video(path: str | Path, cfg: Any = None) -> CuratedVideo:
    """Run the curation stages on one file and return its clips in time order."""
    from avf_data.pipeline import curate_video as curate

    clips, rejects = curate(path, cfg or prediction_config())
    return CuratedVideo(tuple(map(_from_sample, clips)), tuple(rejects))  # already in time order
