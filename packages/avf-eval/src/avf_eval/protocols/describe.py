"""Human-readable listings of the registry for ``avf-eval protocols``."""

from __future__ import annotations

from collections.abc import Iterable

from ..metrics.registry import metric_keys, metric_title
from .types import PUBLISHED_MODELS, Protocol


def _folds(p: Protocol) -> str:
    if p.folds.scheme == "loso":
        return "LOSO"
    return f"{p.folds.count} {p.folds.scheme}"


def protocol_summary_table(protocols: Iterable[Protocol]) -> str:
    """One line per protocol: name, dataset, task, classes/dimensions, folds, metrics, table."""
    rows = [["name", "dataset", "task", "targets", "folds", "aggregation", "metrics", "paper"]]
    for p in protocols:
        targets = f"{p.num_classes} classes" if p.kind == "classification" else "/".join(p.dimensions)
        rows.append(
            [
                p.name,
                p.dataset,
                p.task.upper(),
                targets,
                _folds(p),
                p.fold_aggregation,
                ", ".join(metric_title(m) for m in p.metrics),
                p.source,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows)


def describe_protocol(p: Protocol) -> str:
    """Everything the registry knows about one protocol, including the paper's numbers."""
    lines = [f"{p.name}: {p.dataset} ({p.task.upper()}, {p.kind}), paper {p.source}"]
    if p.classes:
        lines.append("classes (label id: name): " + ", ".join(f"{i}: {c}" for i, c in enumerate(p.classes)))
    if p.dimensions:
        lines.append("dimensions (output order): " + ", ".join(p.dimensions))
    if p.labels is not None and p.labels.merges:
        lines.append("label merges: " + ", ".join(f"{a} -> {b}" for a, b in p.labels.merges.items()))
    if p.labels is not None and p.labels.dropped:
        lines.append("dropped labels: " + ", ".join(p.labels.dropped))
    if p.labels is not None and p.labels.aliases:
        lines.append("native labels accepted: " + ", ".join(f"{a} -> {b}" for a, b in p.labels.aliases.items()))
    lines.append(f"folds: {_folds(p)} ({p.folds.description})")
    lines.append(f"aggregation: {p.fold_aggregation}; primary metric: {p.primary_metric}")
    keys = metric_keys(p.metrics, p.dimensions)
    lines.append("published (percent):")
    for model, title in PUBLISHED_MODELS.items():
        numbers = p.published.get(model, {})
        shown = ", ".join(
            f"{metric_title(k)} {'—' if numbers.get(k) is None else format(numbers[k], '.2f')}"
            for k in keys
            if k in numbers
        )
        lines.append(f"  {title}: {shown or '—'}")
    if p.notes:
        lines.append(f"notes: {p.notes}")
    return "\n".join(lines)
