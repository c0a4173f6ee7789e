"""Render a :class:`ScoreResult` as a comparison table: our numbers beside the paper's.

Scores are shown in percent with two decimals, the way the paper prints them, so a reader can
compare row by row. Text output is for terminals, Markdown for reports and issues, JSON for
scripts.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .aggregation import ScoreResult
from .metrics.registry import metric_keys, metric_title
from .protocols.types import PUBLISHED_MODELS


def _pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _paper(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def comparison_rows(result: ScoreResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows: metric | ours | ±std | each published model."""
    protocol = result.protocol
    header = ["Metric", "Ours", "± std"] + list(PUBLISHED_MODELS.values())
    rows = []
    for key in metric_keys(protocol.metrics, protocol.dimensions):
        published = [protocol.published.get(model, {}).get(key) for model in PUBLISHED_MODELS]
        spread = result.spread.get(key, 0.0)
        rows.append(
            [metric_title(key), _pct(result.summary[key]), _pct(spread) if len(result.folds) > 1 else ""]
            + [_paper(v) for v in published]
        )
    return header, rows


def fold_rows(result: ScoreResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one line per fold with its epoch, size and metrics."""
    keys = metric_keys(result.protocol.metrics, result.protocol.dimensions)
    header = ["Fold", "Epoch", "Videos"] + [metric_title(k) for k in keys]
    rows = [
        [f.fold, "—" if f.epoch is None else str(f.epoch), str(f.num_videos)] + [_pct(f.metrics[k]) for k in keys]
        for f in result.folds
    ]
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
    )  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _caption(result: ScoreResult) -> list[str]:
    p = result.protocol
    lines = [
        f"Protocol {p.name} ({p.dataset}), paper {p.source}: {p.folds.description}.",
        f"Aggregation: {result.aggregation}. Model selection: {result.selection} epoch.",
    ]
    lines += [f"WARNING: {w}" for w in result.warnings]
    return lines


def render_text(result: ScoreResult, show_folds: bool = True) -> str:
    parts = _caption(result) + ["", _text_table(*comparison_rows(result))]
    if show_folds:
        parts += ["", _text_table(*fold_rows(result))]
    return "\n".join(parts)


def render_markdown(result: ScoreResult, show_folds: bool = True) -> str:
    parts = [" ".join(_caption(result)), "", markdown_table(*comparison_rows(result))]
    if show_folds:
        parts += ["", markdown_table(*fold_rows(result))]
    return "\n".join(parts)


def result_to_dict(result: ScoreResult) -> dict[str, Any]:
    """JSON-ready dict; scores as fractions (not percent) as computed."""
    return {
        "protocol": result.protocol.name,
        "aggregation": result.aggregation,
        "selection": result.selection,
        "summary": result.summary,
        "std": result.spread,
        "folds": [
            {"fold": f.fold, "epoch": f.epoch, "videos": f.num_videos, "metrics": f.metrics} for f in result.folds
        ],
        "published_percent": result.protocol.published,
        "warnings": list(result.warnings),
    }


def render_json(result: ScoreResult) -> str:
    return json.dumps(result_to_dict(result), indent=2)
