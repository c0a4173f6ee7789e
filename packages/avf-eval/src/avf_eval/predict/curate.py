"""Curate one raw video into face-crop + audio clips with avf-data's stages, in memory.

No stage logic lives here. If avf-data exposes ``pipeline.curate_video(path, cfg)`` it is
used directly; otherwise the public ``pipeline.process_input`` writes the clip shard into a
temporary folder that is read back with ``shards.iter_clips`` and deleted.

Stages 1-4 (scene cuts, dlib face check, silence split, RetinaFace crop) are enforced as in
curation. The sync and blur filters of stage 5 are *measured but not enforced*: they keep
unsuitable clips out of pre-training data, but a user asking "what emotion is this?" about a
slightly out-of-sync video still deserves an answer.
"""

from __future__ import annotations

import dataclasses
import tempfile
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

    cfg = BuildConfig()
    cfg.enable_sync = False
    cfg.enable_quality = False
    cfg.output = dataclasses.replace(cfg.output, thumbnails=False)
    return cfg


def _from_sample(sample: Any) -> CuratedClip:
    meta = getattr(sample, "meta", {}) or {}
    return CuratedClip(
        key=str(sample.key), frames=sample.frames, audio=sample.audio, fps=float(sample.fps),
        sample_rate=int(sample.sample_rate), start=float(meta.get("start", 0.0)),
        end=float(meta.get("end", len(sample.frames) / float(sample.fps))),
    )


def curate_video(path: str | Path, cfg: Any = None) -> CuratedVideo:
    """Run the curation stages on one file and return its clips in time order."""
    from avf_data import pipeline

    cfg = cfg or prediction_config()
    direct = getattr(pipeline, "curate_video", None)
    if callable(direct):
        clips, rejects = direct(str(path), cfg)
        return CuratedVideo(tuple(sorted(map(_from_sample, clips), key=lambda c: c.start)), tuple(rejects))
    from avf_data.shards import iter_clips

    with tempfile.TemporaryDirectory(prefix="avf-eval-predict-") as tmp:
        result = pipeline.process_input(str(path), tmp, cfg)
        shards = [str(Path(tmp) / shard) for shard in result.get("shards", [])]
        clips = [_from_sample(clip) for clip in iter_clips(shards)] if shards else []
    return CuratedVideo(tuple(sorted(clips, key=lambda c: c.start)), tuple(result.get("rejects", [])))
