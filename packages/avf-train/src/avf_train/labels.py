"""The run's label map: one field (``data.label_map``), resolved once before training starts.

What a user writes there is a spec: ``""`` (the map the shards carry, which ``avf-data import``
wrote into every sample and classes.json), a built-in label space of avf-data (``cea13`` and
``mer3``, the paper's Table 3 hybrids that post-pre-training aligns several datasets onto; any
protocol name), or a YAML file ``{classes, aliases, merges, dropped}``. The pre-flight check
resolves the spec against the shards and writes the full map back into the same field, as a
mapping, so checkpoints carry it and a resumed run, ``predict`` and avf-eval read it without
resolving anything again.

A map given by the user *remaps*: clips are placed by their ``label_name`` through its aliases
and spellings (DFEW's "Happy" and MAFW's "Happiness" both become cea13's Happy). The shards' own
map does not: clips keep their integer labels, and each must carry that same map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from avf_data.labels import LabelSpace, load_label_space
from avf_data.settings import ConfigError

from .errors import DataError


@dataclass(frozen=True)
class RunLabels:
    """The label space of a run and how clips reach it."""

    space: LabelSpace
    remap: bool  # clips are placed by label_name (a user's map), not by the integer label they carry

    def to_config(self) -> dict[str, Any]:
        return {**self.space.to_dict(), "remap": self.remap}

    def index(self, meta: dict[str, Any], key: str) -> int | None:
        """Class index of one clip (None: it carries no label); DataError names what does not fit."""
        if self.remap:
            raw = meta.get("label_name")
            if raw is None:
                raise DataError(
                    f"clip {key!r}: label map {self.space.name!r} needs 'label_name' in the clip metadata; "
                    f"got label={meta.get('label')!r}"
                )
            try:
                index = self.space.resolve(str(raw))
            except ValueError as exc:
                raise DataError(f"clip {key!r}: {exc}") from None
            if index is None:
                raise DataError(f"clip {key!r}: label {raw!r} is one that {self.space.title} drops")
            return index
        carried = meta.get("classes")
        if carried is not None and tuple(carried) != self.space.classes:
            raise DataError(
                f"clip {key!r} is numbered by the label map {list(carried)}, this model by "
                f"{list(self.space.classes)}; import every fold with the same --protocol / --classes"
            )
        label = meta.get("label")
        if label is None:
            return None
        if not 0 <= int(label) < self.space.num_classes:
            raise DataError(f"clip {key!r} has label {label}, outside the label map's {self.space.num_classes} classes")
        return int(label)


def resolve_spec(spec: str) -> RunLabels:
    """A user's spec (built-in name or YAML file) as a remapping label map; ConfigError otherwise."""
    try:
        return RunLabels(load_label_space(spec), remap=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def run_labels(cfg: Any) -> RunLabels | None:
    """The run's label map from ``cfg.data.label_map``: resolved (a mapping), a spec, or none."""
    value = cfg.data.label_map
    if isinstance(value, dict):
        return RunLabels(LabelSpace.from_dict(value), remap=bool(value.get("remap")))
    return resolve_spec(value) if value else None


def class_names(cfg: Any) -> list[str] | None:
    """Names of a classifier's outputs (checkpoints and predictions carry them), None otherwise."""
    if cfg.stage == "pretrain" or cfg.finetune.task == "dea":
        return None
    labels = run_labels(cfg)
    return list(labels.space.classes) if labels is not None else None
