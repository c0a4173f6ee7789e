"""Markdown / HTML report of one scored protocol, with confusion-matrix figures.

The report is a directory (``report.md`` and/or ``report.html`` next to the PNGs) so it can
be attached to an issue, committed, or opened in a browser without a server.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .aggregation import ScoreResult, merge_views, select_epochs
from .metrics.classification import per_class_recall
from .plots import plot_confusion, plot_regression
from .prediction_reader import PredictionTable
from .protocols.types import PUBLISHED_MODELS
from .table import comparison_rows, fold_rows, markdown_table

ReportFormat = Literal["md", "html", "both"]


@dataclass(frozen=True)
class Section:
    """A titled block: a table (header, rows), an image, or a paragraph."""

    title: str
    text: str = ""
    table: tuple[list[str], list[list[str]]] | None = None
    image: str | None = None


def class_names(result: ScoreResult, table: PredictionTable) -> tuple[str, ...]:
    """Per-class names: the label map the predictions carry (avf-train copies it from the shards;
    loading checked it is the protocol's, in order), else the protocol's class list."""
    names = table.class_names
    return names if len(names) == result.protocol.num_classes else result.protocol.classes


def _class_rows(result: ScoreResult, names: tuple[str, ...]) -> tuple[list[str], list[list[str]]] | None:
    if result.pooled_confusion is None:
        return None
    protocol = result.protocol
    recall = per_class_recall(result.pooled_confusion)
    support = result.pooled_confusion.sum(axis=1)
    models = [m for m in PUBLISHED_MODELS if m in protocol.published_class_recall]
    header = ["Class", "Support", "Recall (ours, pooled)"] + [PUBLISHED_MODELS[m] for m in models]
    rows = []
    for i, name in enumerate(names):
        ours = "—" if math.isnan(recall[i]) else f"{100 * recall[i]:.2f}"
        rows.append(
            [name, str(int(support[i])), ours] + [f"{protocol.published_class_recall[m][i]:.2f}" for m in models]
        )
    return header, rows


def build_sections(result: ScoreResult, table: PredictionTable, out_dir: Path) -> list[Section]:
    """Compute every block of the report and write its figures into ``out_dir``."""
    p = result.protocol
    intro = (
        f"{p.dataset}, {p.folds.description}. Paper table: {p.source}. "
        f"Aggregation: {result.aggregation}. Model selection: {result.selection} epoch. "
        "Our scores and the paper's are in percent."
    )
    names = class_names(result, table)
    if table.class_names:
        intro += " Class names and order: the label map carried by the predictions (checked against the protocol)."
    sections = [Section("Protocol", text=intro + (f" Note: {p.notes}" if p.notes else ""))]
    sections += [Section("Warning", text=w) for w in result.warnings]
    sections.append(Section("Ours vs. the paper", table=comparison_rows(result)))
    sections.append(Section("Per fold", table=fold_rows(result)))
    class_rows = _class_rows(result, names)
    if class_rows:
        sections.append(Section("Per class", table=class_rows))
    if p.kind == "classification":
        if result.pooled_confusion is not None:
            plot_confusion(result.pooled_confusion, names, out_dir / "confusion_all.png", f"{p.name}: all folds")
            sections.append(Section("Confusion matrix, all folds", image="confusion_all.png"))
        for fold in result.folds:
            if fold.confusion is not None and len(result.folds) > 1:
                name = f"confusion_fold_{fold.fold}.png"
                plot_confusion(fold.confusion, names, out_dir / name, f"{p.name}: fold {fold.fold}")
                sections.append(Section(f"Confusion matrix, fold {fold.fold}", image=name))
    else:
        selected, _ = select_epochs(table, p, result.selection)
        merged = merge_views(selected, p.kind)
        labels = np.concatenate([m.labels for m in merged])
        outputs = np.concatenate([m.scores for m in merged])
        plot_regression(labels, outputs, p.dimensions, out_dir / "scatter_all.png", f"{p.name}: all folds")
        sections.append(Section("Predictions vs. truth", image="scatter_all.png"))
    return sections


def _markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.text:
            out += [s.text, ""]
        if s.table:
            out += [markdown_table(*s.table), ""]
        if s.image:
            out += [f"![{s.title}]({s.image})", ""]
    return "\n".join(out)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(title: str, sections: list[Section]) -> str:
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            out.append(f"<p>{html.escape(s.text)}</p>")
        if s.table:
            out.append(_html_table(*s.table))
        if s.image:
            out.append(f"<img src='{html.escape(s.image)}' alt='{html.escape(s.title)}'>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(
    result: ScoreResult,
    table: PredictionTable,
    out_dir: str | Path,
    fmt: ReportFormat = "both",
    title: str | None = None,
) -> list[Path]:
    """Write the report files into ``out_dir``; returns the text files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heading = title or f"avf-eval report: {result.protocol.name}"
    sections = build_sections(result, table, out)
    written = []
    if fmt in ("md", "both"):
        written.append(out / "report.md")
        written[-1].write_text(_markdown(heading, sections), encoding="utf-8")
    if fmt in ("html", "both"):
        written.append(out / "report.html")
        written[-1].write_text(_html(heading, sections), encoding="utf-8")
    return written
