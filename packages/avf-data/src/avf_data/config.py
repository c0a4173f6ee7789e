"""Typed configuration of ``avf-data build``: one dataclass per stage, nested in BuildConfig.

Every field has a default, so a YAML file only lists what it changes, e.g.::

    crop:
      out_size: 224
      margin: 1.6
    silence:
      max_clip_seconds: 10
    sync:
      mode: measure          # every stage: off | measure | enforce

Unknown keys are errors (with the list of valid ones), so typos do not pass silently.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .media import MediaConfig
from .settings import ConfigError, gather, parse_size, to_dict, update
from .stages.base import MODES
from .stages.crop import CropConfig
from .stages.face_filter import FaceFilterConfig
from .stages.quality import QualityConfig
from .stages.scene import SceneConfig
from .stages.silence import SilenceConfig
from .stages.sync import SyncConfig

PIPELINE_VERSION = "avf-data-curation/2"


@dataclass
class OutputConfig:
    """shard_size: target size of a shard (``"512MB"``, ``"1GiB"`` or bytes). Finished tasks'
    clips are packed into ``shards/shard-NNNNNN.tar`` in input order; a shard is sealed when the
    next clip would not fit, so shards are at most this large (a single larger clip gets a
    shard of its own) and only the last one of a run is smaller. WebDataset corpora use
    100 MB-1 GB; 512 MB gives ~2,000 clips of 6 s per shard.
    max_clips_per_shard: also seal a shard at this many clips (null: no limit).
    inputs_per_task: inputs curated by one task (one worker call). Small runs use smaller tasks
    so that every worker gets one (task size = min(inputs_per_task, ceil(pending / workers))).
    An interrupted run redoes at most the tasks in flight.
    thumbnails: pictures for the report (its examples only, not one per clip).
    report_examples: accepted and rejected examples shown on the contact sheet.
    """

    shard_size: int | str = "512MB"
    max_clips_per_shard: int | None = None
    inputs_per_task: int = 16
    thumbnails: bool = True
    report_examples: int = 12

    @property
    def shard_bytes(self) -> int:
        return parse_size(self.shard_size, "output.shard_size")


STAGE_SECTIONS = ("scene", "face", "silence", "crop", "sync", "quality")


@dataclass
class BuildConfig:
    """Everything ``avf-data build`` needs besides the input list and output folder."""

    media: MediaConfig = field(default_factory=MediaConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    face: FaceFilterConfig = field(default_factory=FaceFilterConfig)
    silence: SilenceConfig = field(default_factory=SilenceConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    # curate=False (``import --no-curate``): no detection at all; every input becomes one
    # clip, centre-cropped to a square and resized to crop.out_size.
    curate: bool = True

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> BuildConfig:
        data = dict(data or {})
        output = data.get("output")
        if isinstance(output, dict) and "shard_max_count" in output:  # pre-task-grouping name
            output = dict(output)
            old = output.pop("shard_max_count")
            output.setdefault("max_clips_per_shard", old)
            data["output"] = output
        cfg = update(cls(), data)
        for name in ("inputs_per_task", "max_clips_per_shard"):
            value = getattr(cfg.output, name)
            if value is not None and value < 1:
                raise ConfigError(f"config key 'output.{name}' must be >= 1, got {value}")
        cfg.output.shard_bytes  # noqa: B018 - a bad size fails here, naming the key
        for section in STAGE_SECTIONS:
            mode = getattr(cfg, section).mode
            if mode not in MODES:
                raise ConfigError(f"config key '{section}.mode' must be one of {', '.join(MODES)}, got {mode!r}")
        return cfg


def load_config(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None, sets: list[str] | None = None
) -> BuildConfig:
    """Read a YAML config (or defaults when ``path`` is None), then apply ``--set a.b=v``
    assignments and then dotted ``overrides`` ({"crop.out_size": 224})."""
    return BuildConfig.from_dict(gather(path, sets, overrides))


def lenient(cfg: BuildConfig) -> BuildConfig:
    """Options for labelled datasets (already cut clips): no scene or silence splitting,
    whole clip kept up to the chunk length, a looser face check, sync and quality measured
    but not enforced."""
    r = dataclasses.replace
    return r(
        cfg,
        scene=r(cfg.scene, mode="off"),
        silence=r(cfg.silence, mode="off"),
        sync=r(cfg.sync, mode="measure"),
        quality=r(cfg.quality, mode="measure"),
        face=r(cfg.face, min_hit_fraction=0.34, good_score=cfg.face.threshold),
        crop=r(cfg.crop, max_missing=0.6, second_face_ratio=0.0, max_outside=0.6),
    )
