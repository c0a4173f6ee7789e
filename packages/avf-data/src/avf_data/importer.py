"""``avf-data import CSV --out DIR --protocol NAME``: labelled shards for fine-tuning and evaluation.

CSV columns (a header row is optional when the order is ``path,label[,subject,fold]``):

``path``      video file, absolute or relative to the CSV's folder (``key`` is used when there
              is no ``path`` column, so `avf-eval splits` output with paths as keys works)
``label``     class name, the dataset's native code (``ANG``, ``exc``, ``05``, ...) or index
``label_id``  optional class index (written by `avf-eval splits`); must agree with ``label``
``subject``   speaker / subject id (optional; used for subject-independent folds)
``fold``      integer fold (optional)
``target*``   optional regression targets: one column ``targets`` holding numbers separated
              by spaces or ``;``, or several numeric columns named ``target_<name>``

The label map (which index each class gets) travels with the data, so train and test folds
agree even when a fold lacks a class:

``--protocol NAME``  the protocol's label space (``label_spaces.yaml``; `avf-eval protocols NAME`
                     shows it): its class order, native codes and merges; labels the protocol
                     drops are rejected rows
``--classes FILE``   classes in the order of FILE: a previous import's classes.json, a JSON/YAML
                     list, or one name per line (or NAMES, comma-separated)
neither              sorted names found in this CSV (a warning: another CSV may differ)

Every row becomes (after curation with lenient options, or ``--no-curate``) one sample in the
usual format plus ``cls`` and json ``label``/``label_name``/``subject``/``fold``/``classes``
[/``protocol``/``targets``]; ``classes`` in every sample and in ``classes.json`` is the label map
that avf-train copies into checkpoints and predictions and checks wherever two meet. Bad rows
go to ``rejects.jsonl`` (stage "import") and the import goes on; the summary counts them by
reason (duplicates, unknown or dropped labels, ...).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .build import build
from .config import BuildConfig, lenient
from .labels import LabelSpace, builtin, from_names
from .media import path_text
from .rows import RejectRow


def label_space_for(protocol: str | None, classes: list[str] | None) -> LabelSpace | None:
    """``--protocol``'s space (classes, native codes, merges), ``--classes`` in their order, or None."""
    if classes is not None and protocol is not None:
        raise ValueError("give --protocol or --classes, not both")
    if classes is not None:
        return from_names(classes, "--classes")
    if protocol is None:
        return None
    try:
        space = builtin(protocol)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]} (a regression protocol has no classes: give target_* columns)") from None
    if not space.protocol:
        raise ValueError(f"{space.name} is a training label map, not a protocol: import with --classes instead")
    return space


def read_class_list(spec: str) -> list[str]:
    """``--classes``: a classes.json / JSON or YAML list / one-name-per-line file, or comma-separated names."""
    path = Path(spec)
    if path.is_file():
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() in (".json", ".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)  # JSON is YAML
            names = data.get("classes") if isinstance(data, dict) else data
            if not isinstance(names, list):
                raise ValueError(f"--classes {spec}: expected a list of names or a mapping with 'classes'")
        else:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            names = [n.strip() for n in lines[0].split(",")] if len(lines) == 1 else lines
    else:
        names = [n.strip() for n in spec.split(",")]
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"--classes {spec!r} names no class")
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(lowered):
        raise ValueError(f"--classes {spec!r} names a class twice: {names}")
    return names


def inferred_label_space(labels: list[str], csv_name: str) -> LabelSpace:
    """The old rule, for corpora without a protocol: indices if every label is an integer, else
    sorted names. It depends on which labels this one CSV holds, hence the warning."""
    if labels and all(_is_int(lab) for lab in labels):
        classes = [str(i) for i in range(max(int(lab) for lab in labels) + 1)]
    else:
        classes = sorted({lab for lab in labels if not _is_int(lab)})
    return from_names(classes, f"sorted labels of {csv_name}")


def _reason_kind(reason: str) -> str:
    """'labels.csv:4: duplicate path (first row wins)' -> 'duplicate path'."""
    text = reason.split(": ", 1)[1] if ": " in reason else reason
    for kind in (
        "duplicate path",
        "empty path",
        "empty label",
        "unknown label",
        "dropped label",
        "label_id",
        "fold",
        "target",
    ):
        if kind in text:
            return kind
    return text.split(" (")[0]


@dataclass
class LabelCsv:
    """What a label CSV says: label fields per video path, the space they are numbered by, bad rows."""

    labels: dict[str, dict[str, Any]]
    space: LabelSpace
    rejects: list[dict[str, Any]]
    rows: int
    inferred: bool  # numbered from this CSV alone (no --protocol / --classes)


@dataclass
class _Row:
    path: str
    label: str
    label_id: int | None
    extra: dict[str, Any]
    where: str


def _read_table(csv_path: Path) -> tuple[list[str], list[list[str]], int]:
    """(column names, data rows, line number of the first data row); a header row is optional."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise ValueError(f"{csv_path} holds no rows")
    head = [c.strip().lower() for c in rows[0]]
    if ("path" in head or "key" in head) and ("label" in head or "label_id" in head):
        columns = head if "path" in head else ["path" if c == "key" else c for c in head]
        return columns, rows[1:], 2
    return ["path", "label", "subject", "fold"][: max(len(r) for r in rows)], rows, 1


def _parse_row(rec: dict[str, str], where: str, base: Path) -> _Row:
    """One CSV row checked field by field; ValueError names what is wrong with it."""
    if not rec.get("path"):
        raise ValueError("empty path")
    label_id: int | None = None
    if rec.get("label_id"):
        if not _is_int(rec["label_id"]):
            raise ValueError(f"label_id {rec['label_id']!r} is not an integer")
        label_id = int(rec["label_id"])
    if not rec.get("label") and label_id is None:
        raise ValueError("empty label")
    extra: dict[str, Any] = {"subject": rec.get("subject") or None, "fold": None}
    if rec.get("fold"):
        if not _is_int(rec["fold"]):
            raise ValueError(f"fold {rec['fold']!r} is not an integer")
        extra["fold"] = int(rec["fold"])
    targets = _targets(rec)
    if targets is not None:
        extra["targets"] = targets
    path = rec["path"] if os.path.isabs(rec["path"]) else str(base / rec["path"])
    return _Row(path, rec.get("label", ""), label_id, extra, where)


def _class_of(row: _Row, space: LabelSpace) -> int:
    """The row's class index in ``space``; ValueError says why the row has none."""
    i: int | None = row.label_id
    if row.label:
        try:
            i = space.resolve(row.label)
        except ValueError as exc:
            raise ValueError(f"unknown label {row.label!r} ({exc})") from None
        if i is None:
            raise ValueError(f"dropped label {row.label!r}: {space.title} does not score it")
        if row.label_id is not None and row.label_id != i:
            raise ValueError(
                f"label_id {row.label_id} disagrees with label {row.label!r} = class {i} "
                f"({space.classes[i]}) of {space.title}"
            )
    if i is None or not 0 <= i < space.num_classes:
        raise ValueError(f"label_id {i} out of range 0..{space.num_classes - 1} of {space.title}")
    return i


def read_label_csv(
    csv_path: str | os.PathLike, classes: list[str] | None = None, protocol: str | None = None
) -> LabelCsv:
    """Parse the CSV into label fields per video, numbered by the given (or inferred) space."""
    space = label_space_for(protocol, classes)
    csv_path = Path(csv_path)
    columns, body, first_line = _read_table(csv_path)
    if space is None and "label_id" in columns:
        raise ValueError(
            f"{csv_path} has a label_id column (avf-eval splits output) but nothing names its indices: "
            "pass --protocol NAME (or --classes FILE)"
        )
    rejects: list[dict[str, Any]] = []

    def bad(path: str, where: str, reason: str) -> None:
        rejects.append(
            RejectRow(path_text(path or where), "", 0.0, 0.0, "import", "import.row", f"{where}: {reason}").to_dict()
        )

    parsed: list[_Row] = []
    seen: set[str] = set()
    base = csv_path.resolve().parent
    for n, r in enumerate(body, start=first_line):
        rec = {c: (r[i].strip() if i < len(r) else "") for i, c in enumerate(columns)}
        where = f"{csv_path.name}:{n}"
        try:
            row = _parse_row(rec, where, base)
        except ValueError as exc:
            bad(rec.get("path", ""), where, str(exc))
            continue
        if os.path.abspath(row.path) in seen:
            bad(row.path, where, "duplicate path (first row wins)")
            continue
        seen.add(os.path.abspath(row.path))
        parsed.append(row)
    inferred = space is None
    if space is None:
        space = inferred_label_space([row.label for row in parsed], csv_path.name)
    out: dict[str, dict[str, Any]] = {}
    for row in parsed:
        try:
            i = _class_of(row, space)
        except ValueError as exc:
            bad(row.path, row.where, str(exc))
            continue
        fields: dict[str, Any] = {
            "label": i,
            "label_name": space.classes[i],
            **row.extra,
            "classes": list(space.classes),
        }
        if space.protocol:
            fields["protocol"] = space.protocol
        out[row.path] = fields
    return LabelCsv(out, space, rejects, len(body), inferred)


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _targets(rec: dict[str, str]) -> list[float] | None:
    vals: list[float] = []
    if rec.get("targets"):
        parts = rec["targets"].replace(";", " ").split()
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"targets {rec['targets']!r} are not numbers") from None
    cols = sorted(k for k in rec if k.startswith("target_"))
    for k in cols:
        try:
            vals.append(float(rec[k]))
        except ValueError:
            raise ValueError(f"{k} {rec[k]!r} is not a number") from None
    return vals or None


def import_csv(
    csv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: BuildConfig | None = None,
    *,
    curate: bool = True,
    strict: bool = False,
    classes: list[str] | None = None,
    protocol: str | None = None,
    **build_kwargs: Any,
) -> dict[str, Any]:
    """Build labelled shards from a CSV; returns the build stats plus ``classes``, ``label_map``
    (classes.json's content), ``csv`` (row counts, rejects by reason, a summary line) and
    ``import_warnings``."""
    cfg = cfg or BuildConfig()
    if not strict:
        cfg = lenient(cfg)
    if not curate:
        cfg.curate = False
    table = read_label_csv(csv_path, classes, protocol)
    label_map = _write_classes_json(Path(out_dir), table.space)
    stats = build(
        list(table.labels),
        out_dir,
        cfg,
        labels=table.labels,
        preface=[_csv_rows_input(csv_path, table)],
        **build_kwargs,
    )
    stats["classes"] = list(table.space.classes)
    stats["label_map"] = label_map
    stats["csv"] = _csv_summary(Path(csv_path).name, table)
    stats["import_warnings"] = []
    if table.inferred:
        stats["import_warnings"].append(
            f"classes are numbered by the sorted labels of this CSV {list(table.space.classes)}; another CSV (a test "
            "fold without some class) will number them differently. Pass --protocol NAME or --classes FILE "
            "(e.g. this import's classes.json) to fix the order"
        )
    return stats


def _write_classes_json(out: Path, space: LabelSpace) -> dict[str, Any]:
    """``OUT/classes.json``, the label map beside the shards; another numbering in the same OUT is refused."""
    previous = out / "classes.json"
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8")).get("classes")
        if old is not None and [str(c) for c in old] != list(space.classes):
            raise ValueError(
                f"{out} already holds an import numbered {old}; this one numbers {list(space.classes)} "
                f"({space.title}): use a new --out"
            )
    label_map = {
        "classes": list(space.classes),
        "num_classes": space.num_classes,
        "protocol": space.protocol or None,
        "source": space.title,
    }
    out.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(label_map, indent=2) + "\n", encoding="utf-8")
    return label_map


def _csv_rows_input(csv_path: str | os.PathLike, table: LabelCsv) -> dict[str, Any]:
    """Bad CSV rows as one pseudo-input of the build log, so that a resumed import keeps them."""
    return {
        "input_id": "csvrows_" + hashlib.sha1(os.fsencode(os.path.abspath(csv_path))).hexdigest()[:8],
        "source": path_text(csv_path),
        "seconds": 0.0,
        "frames": 0,
        "manifest": [],
        "rejects": table.rejects,
        "stages": {},
        "sync_methods": [],
        "proc_seconds": 0.0,
    }


def _csv_summary(name: str, table: LabelCsv) -> dict[str, Any]:
    by_reason = Counter(_reason_kind(r["reason"]) for r in table.rejects)
    detail = ", ".join(f"{n} {kind}" for kind, n in by_reason.most_common())
    return {
        "rows": table.rows,
        "imported": len(table.labels),
        "rejected": len(table.rejects),
        "rejected_by_reason": dict(by_reason),
        "line": f"CSV {name}: {table.rows} rows -> {len(table.labels)} inputs, {len(table.rejects)} rejected"
        + (f" ({detail})" if detail else ""),
    }
