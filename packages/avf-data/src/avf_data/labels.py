"""Label spaces: the class order a labelled corpus is numbered by, and every name that reaches it.

One type serves the whole chain. ``avf-data import`` numbers rows by a space (a protocol's,
``--classes``, or the CSV's sorted names) and writes its classes into every sample; avf-train
maps clips through a space (the shards' own, or a remap such as the paper's Table 3 hybrids
``cea13``/``mer3``) and carries its classes into checkpoints; avf-eval scores a protocol whose
classes are a space and refuses predictions named otherwise. The built-in spaces live as data in
``label_spaces.yaml`` beside this module.

A raw label is matched case-insensitively: first through ``aliases`` (a dataset's native codes:
CREMA-D ``ANG``, IEMOCAP ``exc``, RAVDESS ``05``), then ``dropped`` (a label the space leaves
out: the row is not part of the protocol), then ``merges`` (labels folded into a class: IEMOCAP's
excitement into happiness), then the classes; a label that matches nothing is tried in its other
spellings (:data:`SPELLINGS`: ``happy`` finds ``happiness``). Anything else is an error, so a
typo cannot silently shrink a class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

#: Spellings datasets use for the same emotion; a label is tried in the others of its group.
SPELLINGS: tuple[frozenset[str], ...] = tuple(
    frozenset(group)
    for group in (
        ("anger", "angry"),
        ("happiness", "happy"),
        ("sadness", "sad"),
        ("fear", "fearful"),
        ("surprise", "surprised"),
        ("disgust", "disgusted"),
        ("worried", "worry"),
        ("contempt", "contemptuous"),
        ("anxiety", "anxious"),
        ("helplessness", "helpless"),
        ("disappointment", "disappointed"),
    )
)


def _spellings(key: str) -> list[str]:
    """``key`` and then its other spellings, in a fixed order."""
    return [key, *sorted(next((group - {key} for group in SPELLINGS if key in group), set()))]


@dataclass(frozen=True)
class LabelSpace:
    """Class names in index order, and the aliases, merges and dropped labels that lead to them."""

    name: str
    classes: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    merges: Mapping[str, str] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    protocol: str = ""  # the avf-eval protocol numbered by this space, if any
    source: str = ""  # where the space came from, for messages ("protocol dfew", a file, ...)
    indices: bool = False  # a label may also be given as its class index ("3")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def title(self) -> str:
        return self.source or self.name

    def resolve(self, raw: str) -> int | None:
        """Class index of a raw label; None for a label the space drops; ValueError if unknown."""
        aliases = {k.lower(): v.lower() for k, v in self.aliases.items()}
        merges = {k.lower(): v.lower() for k, v in self.merges.items()}
        dropped = {d.lower() for d in self.dropped}
        lowered = [c.lower() for c in self.classes]
        key = str(raw).strip().lower()
        for name in _spellings(aliases.get(key, key)):
            if name in dropped:
                return None
            name = merges.get(name, name)
            if name in lowered:
                return lowered.index(name)
        if self.indices and key.isdigit() and int(key) < len(self.classes):
            return int(key)
        raise ValueError(
            f"label {raw!r} is not a class of {self.title} (classes: {', '.join(self.classes)}"
            + (f"; merges: {dict(self.merges)}" if self.merges else "")
            + (f"; native codes: {', '.join(sorted(self.aliases))}" if self.aliases else "")
            + ")"
        )

    def class_index(self, name: str) -> int | None:
        """Index of the class a *class name* denotes (spellings and aliases, no merges), or None.

        Used to compare label maps carried by shards, checkpoints and predictions: the names a
        model was trained with must be this space's classes, in this order.
        """
        key = str(name).strip().lower()
        key = {k.lower(): v.lower() for k, v in self.aliases.items()}.get(key, key)
        lowered = [c.lower() for c in self.classes]
        return next((lowered.index(n) for n in _spellings(key) if n in lowered), None)

    def check_names(self, names: Sequence[str]) -> str | None:
        """None when ``names`` are this space's classes in its order, else what differs."""
        if [self.class_index(str(n)) for n in names] == list(range(self.num_classes)):
            return None
        return (
            f"the label map names its {len(names)} classes [{', '.join(map(str, names))}] but "
            f"{self.title} has [{', '.join(self.classes)}] in this order"
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the space (configs and checkpoints carry it)."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "aliases": dict(self.aliases),
            "merges": dict(self.merges),
            "dropped": list(self.dropped),
            "protocol": self.protocol,
            "source": self.source,
            "indices": self.indices,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "", source: str = "") -> LabelSpace:
        """A space from a mapping (``to_dict`` output or a YAML file); ValueError says what is wrong."""
        where = source or name or "label space"
        classes = tuple(str(c) for c in data.get("classes") or ())
        if not classes:
            raise ValueError(f"{where} has no 'classes' list")
        if len({c.lower() for c in classes}) != len(classes):
            raise ValueError(f"{where} names a class twice: {list(classes)}")
        space = cls(
            name=str(data.get("name") or name),
            classes=classes,
            aliases={str(k): str(v) for k, v in (data.get("aliases") or {}).items()},
            merges={str(k): str(v) for k, v in (data.get("merges") or {}).items()},
            dropped=tuple(str(d) for d in data.get("dropped") or ()),
            protocol=str(data.get("protocol") or ""),
            source=str(data.get("source") or source),
            indices=bool(data.get("indices", False)),
        )
        _check_targets(space, where)
        return space


def _check_targets(space: LabelSpace, where: str) -> None:
    """Every merge lands on a class and every alias on a class, merge or dropped label."""
    lowered = {c.lower() for c in space.classes}
    for label, target in space.merges.items():
        if target.lower() not in lowered:
            raise ValueError(f"{where}: merge {label!r} -> {target!r} names no class")
    known = lowered | {m.lower() for m in space.merges} | {d.lower() for d in space.dropped}
    for alias, target in space.aliases.items():
        if target.lower() not in known:
            raise ValueError(f"{where}: alias {alias!r} -> {target!r} names no class, merge or dropped label")


def from_names(classes: Sequence[str], source: str, protocol: str = "") -> LabelSpace:
    """Classes in the given order; a label is a class name (any spelling) or its index."""
    return LabelSpace(
        name=protocol or source, classes=tuple(str(c) for c in classes), protocol=protocol, source=source, indices=True
    )


@cache
def builtin_spaces() -> dict[str, LabelSpace]:
    """The shipped spaces by name: the Table 3 hybrids and every classification protocol's."""
    import yaml

    text = resources.files("avf_data").joinpath("label_spaces.yaml").read_text("utf-8")
    raw: dict[str, dict[str, Any]] = yaml.safe_load(text)
    spaces = {}
    for name, entry in raw.items():
        protocol = name if entry.pop("protocol", True) else ""
        spaces[name] = LabelSpace.from_dict(
            {**entry, "protocol": protocol}, name=name, source=f"protocol {name}" if protocol else name
        )
    return spaces


def builtin(name: str) -> LabelSpace:
    """A shipped space (case-insensitive, ``_`` and ``-`` alike); KeyError lists the known ones."""
    spaces = builtin_spaces()
    key = name.strip().lower().replace("_", "-")
    if key not in spaces:
        raise KeyError(f"no label space named {name!r}; known: {', '.join(spaces)}")
    return spaces[key]


def load_label_space(spec: str) -> LabelSpace:
    """A shipped space by name, or a YAML file ``{classes, aliases, merges, dropped}``."""
    import yaml

    try:
        return builtin(spec)
    except KeyError:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(
                f"label map {spec!r} is neither a built-in label space ({', '.join(builtin_spaces())}) "
                "nor an existing YAML file"
            ) from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"label map {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"label map {path} must be a mapping {{classes: [...], aliases: {{...}}}}")
    return LabelSpace.from_dict(data, name=path.stem, source=f"label map {path.name}")
