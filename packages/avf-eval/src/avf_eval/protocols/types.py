"""Typed view of one benchmark protocol: what is predicted, how folds are cut, what is scored.

The data lives in ``registry.yaml`` so the paper's numbers can be read and diffed without
reading code; these dataclasses validate it once at load time, so every consumer (score,
report, splits, predict) can rely on the fields being present and consistent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FoldSchemeName = Literal["official", "subject", "session", "loso"]
FoldAggregation = Literal["mean", "last", "pooled"]
TaskKind = Literal["classification", "regression"]

#: Models whose published numbers the registry carries, with their table titles.
#: Spellings the datasets use for the same emotion. A label that matches no class, alias or merge
#: is tried in the other spellings of its group, so ``happy`` finds a protocol's ``happiness``
#: and ``fear`` finds RAVDESS's ``fearful`` without every protocol listing every variant.
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
    )
)

PUBLISHED_MODELS: dict[str, str] = {
    "avf_mae_pp_b": "AVF-MAE++ (B)",
    "avf_mae_pp_l": "AVF-MAE++ (L)",
    "avf_mae_pp_h": "AVF-MAE++ (H)",
    "hicmae_b": "HiCMAE-B",
}


@dataclass(frozen=True)
class FoldScheme:
    """How a dataset is cut into train/test folds.

    ``count`` is None only for leave-one-subject-out, where it equals the number of
    subjects in the metadata. ``group_column`` names the metadata column the folds must not
    share (subject or session); ``test_split`` names the test partition of an official
    single split.
    """

    scheme: FoldSchemeName
    description: str
    count: int | None = None
    group_column: str | None = None
    test_split: str | None = None


@dataclass(frozen=True)
class Protocol:
    """One scored benchmark protocol of the paper."""

    name: str
    dataset: str
    task: Literal["cea", "dea", "mer"]
    kind: TaskKind
    folds: FoldScheme
    fold_aggregation: FoldAggregation
    metrics: tuple[str, ...]
    primary_metric: str
    source: str
    classes: tuple[str, ...] = ()
    dimensions: tuple[str, ...] = ()
    label_merges: dict[str, str] = field(default_factory=dict)
    dropped_labels: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    published: dict[str, dict[str, float | None]] = field(default_factory=dict)
    published_class_recall: dict[str, tuple[float, ...]] = field(default_factory=dict)
    notes: str = ""
    benchmark: str = ""

    def __post_init__(self) -> None:
        if not self.benchmark:  # most benchmarks are scored by exactly one protocol
            object.__setattr__(self, "benchmark", self.name)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def output_size(self) -> int:
        """Width of the model head: classes for classification, dimensions for regression."""
        return len(self.classes) if self.kind == "classification" else len(self.dimensions)

    def _resolve(self, raw: str) -> tuple[str, bool]:
        """(name after aliases and merges, whether the label is dropped) for one raw label."""
        aliases = {k.lower(): v.lower() for k, v in self.aliases.items()}
        merges = {k.lower(): v.lower() for k, v in self.label_merges.items()}
        dropped = {d.lower() for d in self.dropped_labels}
        lowered = [c.lower() for c in self.classes]
        key = raw.strip().lower()
        key = aliases.get(key, key)
        candidates = [key] + sorted(next((g - {key} for g in SPELLINGS if key in g), set()))
        for name in candidates:
            if name in dropped:
                return name, True
            name = merges.get(name, name)
            if name in lowered:
                return name, False
        return key, False

    def map_label(self, raw: str) -> int | None:
        """Raw dataset label -> class id after aliases and merges; None for a dropped label.

        Matching is case-insensitive because datasets spell labels inconsistently
        (``Happiness``, ``happy``, ``HAP``); native codes (CREMA-D ``ANG``, IEMOCAP ``exc``,
        RAVDESS ``05``) go through the protocol's ``aliases``. Unknown labels raise, so a typo
        in a metadata file cannot silently shrink a class.
        """
        name, is_dropped = self._resolve(raw)
        if is_dropped:
            return None
        lowered = [c.lower() for c in self.classes]
        if name in lowered:
            return lowered.index(name)
        raise ValueError(
            f"label {raw!r} is not a class of protocol {self.name} "
            f"(classes: {', '.join(self.classes)}; merges: {self.label_merges or 'none'}; "
            f"aliases: {', '.join(sorted(self.aliases)) or 'none'})"
        )

    def class_index(self, name: str) -> int | None:
        """Index of the class a *class name* denotes (spelling variants and aliases, no merges).

        Used to check a label map carried by shards, checkpoints and predictions: the names a
        model was trained with must be this protocol's classes, in this order.
        """
        key = name.strip().lower()
        key = {k.lower(): v.lower() for k, v in self.aliases.items()}.get(key, key)
        lowered = [c.lower() for c in self.classes]
        for candidate in [key] + sorted(next((g - {key} for g in SPELLINGS if key in g), set())):
            if candidate in lowered:
                return lowered.index(candidate)
        return None

    def check_class_names(self, names: tuple[str, ...] | list[str]) -> str | None:
        """None when ``names`` are this protocol's classes in its order, else what differs."""
        if self.kind != "classification":
            return None
        indices = [self.class_index(str(n)) for n in names]
        if indices == list(range(self.num_classes)):
            return None
        return (
            f"the label map names its {len(names)} classes [{', '.join(map(str, names))}] but protocol "
            f"{self.name} has [{', '.join(self.classes)}] in this order"
        )
