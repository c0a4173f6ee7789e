"""The stages of ``avf-data build``, in pipeline order: the one list of them.

Everything else is derived from this list: the config sections (``BuildConfig``), the order of
the statistics and of the report's tables, the stage lines of ``avf-data build --help``.
Adding a stage is one module holding its :class:`~avf_data.stages.base.Stage` subclass (the
unit, its ``Config`` section and its ``codes``) plus one line here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Stage
from .crop import CropStage
from .face_filter import FaceStage
from .quality import QualityStage
from .scene import SceneStage
from .silence import SilenceStage
from .sync import SyncStage

STAGES: list[type[Stage]] = [SceneStage, FaceStage, SilenceStage, CropStage, SyncStage, QualityStage]


def names() -> list[str]:
    """Stage names in pipeline order (each is also its config section and its codes' prefix)."""
    return [cls.name for cls in STAGES]


def default_sections() -> dict[str, Any]:
    """A default config section per stage, in pipeline order."""
    return {cls.name: cls.Config() for cls in STAGES}


def build(sections: dict[str, Any], weights: str | None = None, *, curate: bool = True) -> list[Stage]:
    """The stage units of a build. ``curate=False`` (``import --no-curate``) turns every stage
    off, so only a stage that must run runs its cheap default: the crop stage's centre square."""
    units = []
    for cls in STAGES:
        cfg = sections[cls.name]
        units.append(cls(cfg if curate else dataclasses.replace(cfg, mode="off"), weights))
    return units


def preload() -> None:
    """Every stage's models and lazy modules, loaded once (before workers fork)."""
    for cls in STAGES:
        cls.preload()
