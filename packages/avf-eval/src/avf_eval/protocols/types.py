"""Typed view of one benchmark protocol: what is predicted, how folds are cut, what is scored.

The data lives in ``registry.yaml`` so the paper's numbers can be read and diffed without
reading code; a protocol's classes (with the datasets' native codes, merges and dropped labels)
are its label space, which avf-data ships (``avf_data/label_spaces.yaml``) because import,
training and scoring must all number classes the same way. These dataclasses validate it once
at load time, so every consumer (score, report, splits, predict) can rely on the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avf_data.labels import LabelSpace

FoldSchemeName = Literal["official", "subject", "session", "loso"]
FoldAggregation = Literal["mean", "last", "pooled"]
TaskKind = Literal["classification", "regression"]

#: Models whose published numbers the registry carries, with their table titles.
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
    labels: LabelSpace | None = None  # classification: classes, native codes, merges (avf-data's label_spaces.yaml)
    dimensions: tuple[str, ...] = ()
    published: dict[str, dict[str, float | None]] = field(default_factory=dict)
    published_class_recall: dict[str, tuple[float, ...]] = field(default_factory=dict)
    notes: str = ""
    benchmark: str = ""

    def __post_init__(self) -> None:
        if not self.benchmark:  # most benchmarks are scored by exactly one protocol
            object.__setattr__(self, "benchmark", self.name)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labels.classes if self.labels is not None else ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def output_size(self) -> int:
        """Width of the model head: classes for classification, dimensions for regression."""
        return len(self.classes) if self.kind == "classification" else len(self.dimensions)

    def map_label(self, raw: str) -> int | None:
        """Raw dataset label -> class id after aliases and merges; None for a dropped label."""
        if self.labels is None:
            raise ValueError(f"protocol {self.name} is a {self.kind} protocol: it has no classes")
        return self.labels.resolve(raw)
