"""Typed configuration of ``avf-data build``: media and output settings, and one section per stage.

The stage sections are the ``Config`` dataclasses of the stages in
:mod:`avf_data.stages.registry`, in pipeline order; ``cfg.crop`` is the crop stage's section.
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
from .settings import ConfigError, coerce, gather, parse_size, to_dict, update
from .stages import registry
from .stages.base import MODES

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


@dataclass
class BuildConfig:
    """Everything ``avf-data build`` needs besides the input list and output folder.

    ``sections``: the config section of every stage, by stage name, in pipeline order (from
    the stage registry), so a new stage brings its own section; ``cfg.<stage name>`` reads one.
    ``curate=False`` (``import --no-curate``): no detection at all; every input becomes one
    clip, centre-cropped to a square and resized to ``crop.out_size``.
    """

    media: MediaConfig = field(default_factory=MediaConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    curate: bool = True
    sections: dict[str, Any] = field(default_factory=registry.default_sections)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections") or {}
        if name in sections:
            return sections[name]
        raise AttributeError(f"BuildConfig has no field or stage section {name!r}")

    def replace(self, **changes: Any) -> BuildConfig:
        """A copy with fields or stage sections replaced: ``cfg.replace(sync=..., output=...)``."""
        sections = {k: v for k, v in changes.items() if k in self.sections}
        rest = {k: v for k, v in changes.items() if k not in sections}
        return dataclasses.replace(self, **rest, sections={**self.sections, **sections})

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout: ``media``, one mapping per stage, ``output``, ``curate``."""
        return {
            "media": to_dict(self.media),
            **{name: to_dict(section) for name, section in self.sections.items()},
            "output": to_dict(self.output),
            "curate": self.curate,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> BuildConfig:
        data = dict(data or {})
        output = data.get("output")
        if isinstance(output, dict) and "shard_max_count" in output:  # pre-task-grouping name
            output = dict(output)
            old = output.pop("shard_max_count")
            output.setdefault("max_clips_per_shard", old)
            data["output"] = output
        cfg = cls()
        for key, value in data.items():
            if key in cfg.sections:
                update(cfg.sections[key], value if value is not None else {}, prefix=f"{key}.")
            elif key in ("media", "output"):
                update(getattr(cfg, key), value if value is not None else {}, prefix=f"{key}.")
            elif key == "curate":
                cfg.curate = coerce(value, bool, key)
            else:
                valid = ", ".join(["media", *cfg.sections, "output", "curate"])
                raise ConfigError(f"unknown config key '{key}'; valid keys: {valid}")
        for name in ("inputs_per_task", "max_clips_per_shard"):
            value = getattr(cfg.output, name)
            if value is not None and value < 1:
                raise ConfigError(f"config key 'output.{name}' must be >= 1, got {value}")
        cfg.output.shard_bytes  # noqa: B018 - a bad size fails here, naming the key
        for name, section in cfg.sections.items():
            if section.mode not in MODES:
                raise ConfigError(f"config key '{name}.mode' must be one of {', '.join(MODES)}, got {section.mode!r}")
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
    return cfg.replace(
        scene=r(cfg.scene, mode="off"),
        silence=r(cfg.silence, mode="off"),
        sync=r(cfg.sync, mode="measure"),
        quality=r(cfg.quality, mode="measure"),
        face=r(cfg.face, min_hit_fraction=0.34, good_score=cfg.face.threshold),
        crop=r(cfg.crop, max_missing=0.6, second_face_ratio=0.0, max_outside=0.6),
    )
