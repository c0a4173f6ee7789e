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

``--protocol NAME``  classes in the order of an avf-eval protocol (`avf-eval protocols NAME`);
                     native codes and spellings are mapped through the protocol's aliases and
                     merges, labels the protocol drops are rejected rows
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import build
from .config import BuildConfig, lenient
from .media import path_text
from .rows import RejectRow


@dataclass(frozen=True)
class LabelSpace:
    """The class order every sample of one import is numbered by: the label map that travels.

    ``resolve`` turns a raw CSV label into a class index, ``None`` for a label the protocol
    drops, and raises ValueError for an unknown one.
    """

    classes: tuple[str, ...]
    source: str
    protocol: str | None = None
    inferred: bool = False  # numbered from this CSV alone (no --protocol / --classes)
    resolve: Callable[[str], int | None] = field(default=lambda label: None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "num_classes": len(self.classes),
            "protocol": self.protocol,
            "source": self.source,
        }


def protocol_label_space(name: str) -> LabelSpace:
    """Classes, aliases and merges of an avf-eval protocol (avf-eval holds the registry)."""
    try:
        from avf_eval.protocols import get_protocol
    except ImportError:
        raise ValueError(
            "--protocol needs the avf-eval package (its protocol registry): pip install avf-eval"
        ) from None
    try:
        protocol = get_protocol(name)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if protocol.kind != "classification":
        raise ValueError(
            f"protocol {protocol.name} is a {protocol.kind} protocol: it has dimensions "
            f"({', '.join(protocol.dimensions)}), not classes; give target_* columns instead"
        )
    return LabelSpace(tuple(protocol.classes), f"protocol {protocol.name}", protocol.name, resolve=protocol.map_label)


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


def given_label_space(classes: list[str], source: str) -> LabelSpace:
    """Classes in the given order; a label is a class name (any case) or an index into them."""
    lowered = [c.lower() for c in classes]

    def resolve(label: str) -> int:
        key = label.strip().lower()
        if key in lowered:
            return lowered.index(key)
        if _is_int(label) and 0 <= int(label) < len(classes):
            return int(label)
        raise ValueError(f"label {label!r} is not one of the classes {list(classes)}")

    return LabelSpace(tuple(classes), source, resolve=resolve)


def inferred_label_space(labels: list[str], csv_name: str) -> LabelSpace:
    """The old rule, for corpora without a protocol: indices if every label is an integer, else
    sorted names. It depends on which labels this one CSV holds, hence the warning."""
    if labels and all(_is_int(lab) for lab in labels):
        classes = [str(i) for i in range(max(int(lab) for lab in labels) + 1)]
    else:
        classes = sorted({lab for lab in labels if not _is_int(lab)})
    space = given_label_space(classes, f"sorted labels of {csv_name}")
    return LabelSpace(space.classes, space.source, inferred=True, resolve=space.resolve)


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


def read_label_csv(
    csv_path: str | os.PathLike, classes: list[str] | None = None, protocol: str | None = None
) -> tuple[dict[str, dict[str, Any]], LabelSpace, list[dict[str, Any]], int]:
    """Parse the CSV. Returns ({path: label fields}, label space, reject rows, number of data rows)."""
    if classes is not None and protocol is not None:
        raise ValueError("give --protocol or --classes, not both")
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise ValueError(f"{csv_path} holds no rows")
    head = [c.strip().lower() for c in rows[0]]
    if ("path" in head or "key" in head) and ("label" in head or "label_id" in head):
        columns, body, first_line = head, rows[1:], 2
        if "path" not in head:
            columns = ["path" if c == "key" else c for c in head]
    else:
        columns, body, first_line = ["path", "label", "subject", "fold"][: max(len(r) for r in rows)], rows, 1
    space = (
        protocol_label_space(protocol)
        if protocol is not None
        else given_label_space(classes, "--classes")
        if classes is not None
        else None
    )
    if space is None and "label_id" in columns:
        raise ValueError(
            f"{csv_path} has a label_id column (avf-eval splits output) but nothing names its indices: "
            "pass --protocol NAME (or --classes FILE)"
        )
    rejects: list[dict[str, Any]] = []
    parsed: list[tuple[str, str, int | None, dict[str, Any], int]] = []
    seen: set[str] = set()

    def bad(rec: dict[str, str], where: str, reason: str) -> None:
        rejects.append(
            RejectRow(
                path_text(rec.get("path") or where), "", 0.0, 0.0, "import", "import.row", f"{where}: {reason}"
            ).to_dict()
        )

    for n, r in enumerate(body, start=first_line):
        rec = {c: (r[i].strip() if i < len(r) else "") for i, c in enumerate(columns)}
        where = f"{csv_path.name}:{n}"
        if not rec.get("path"):
            bad(rec, where, "empty path")
            continue
        label_id: int | None = None
        if rec.get("label_id"):
            if not _is_int(rec["label_id"]):
                bad(rec, where, f"label_id {rec['label_id']!r} is not an integer")
                continue
            label_id = int(rec["label_id"])
        if not rec.get("label") and label_id is None:
            bad(rec, where, "empty label")
            continue
        path = rec["path"] if os.path.isabs(rec["path"]) else str(base / rec["path"])
        if os.path.abspath(path) in seen:
            bad(rec, where, "duplicate path (first row wins)")
            continue
        extra: dict[str, Any] = {"subject": rec.get("subject") or None, "fold": None}
        if rec.get("fold"):
            try:
                extra["fold"] = int(rec["fold"])
            except ValueError:
                bad(rec, where, f"fold {rec['fold']!r} is not an integer")
                continue
        try:
            targets = _targets(rec)
        except ValueError as exc:
            bad(rec, where, str(exc))
            continue
        if targets is not None:
            extra["targets"] = targets
        seen.add(os.path.abspath(path))
        parsed.append((path, rec.get("label", ""), label_id, extra, n))
    if space is None:
        space = inferred_label_space([lab for _, lab, _, _, _ in parsed], csv_path.name)
    out: dict[str, dict[str, Any]] = {}
    for path, lab, label_id, extra, n in parsed:
        where = f"{csv_path.name}:{n}"
        rec = {"path": path}
        i: int | None = label_id
        if lab:
            try:
                i = space.resolve(lab)
            except ValueError as exc:
                bad(rec, where, f"unknown label {lab!r} ({exc})")
                continue
            if i is None:
                bad(rec, where, f"dropped label {lab!r}: {space.source} does not score it")
                continue
            if label_id is not None and label_id != i:
                bad(
                    rec,
                    where,
                    f"label_id {label_id} disagrees with label {lab!r} = class {i} "
                    f"({space.classes[i]}) of {space.source}",
                )
                continue
        if i is None or not 0 <= i < len(space.classes):
            bad(rec, where, f"label_id {i} out of range 0..{len(space.classes) - 1} of {space.source}")
            continue
        fields: dict[str, Any] = {"label": i, "label_name": space.classes[i], **extra, "classes": list(space.classes)}
        if space.protocol:
            fields["protocol"] = space.protocol
        out[path] = fields
    return out, space, rejects, len(body)


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
    labels, space, rejects, num_rows = read_label_csv(csv_path, classes, protocol)
    out = Path(out_dir)
    previous = out / "classes.json"
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8")).get("classes")
        if old is not None and [str(c) for c in old] != list(space.classes):
            raise ValueError(
                f"{out} already holds an import numbered {old}; this one numbers {list(space.classes)} "
                f"({space.source}): use a new --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps(space.to_json(), indent=2) + "\n", encoding="utf-8")
    # bad CSV rows are logged once, as a pseudo-input, so that resumes keep them
    rid = "csvrows_" + hashlib.sha1(os.fsencode(os.path.abspath(csv_path))).hexdigest()[:8]
    csv_rows = {
        "input_id": rid,
        "source": path_text(csv_path),
        "seconds": 0.0,
        "frames": 0,
        "manifest": [],
        "rejects": rejects,
        "stages": {},
        "sync_methods": [],
        "proc_seconds": 0.0,
    }
    stats = build(list(labels), out, cfg, labels=labels, preface=[csv_rows], **build_kwargs)
    stats["classes"] = list(space.classes)
    stats["label_map"] = space.to_json()
    by_reason = Counter(_reason_kind(r["reason"]) for r in rejects)
    detail = ", ".join(f"{n} {kind}" for kind, n in by_reason.most_common())
    stats["csv"] = {
        "rows": num_rows,
        "imported": len(labels),
        "rejected": len(rejects),
        "rejected_by_reason": dict(by_reason),
        "line": f"CSV {Path(csv_path).name}: {num_rows} rows -> {len(labels)} inputs, {len(rejects)} rejected"
        + (f" ({detail})" if detail else ""),
    }
    stats["import_warnings"] = []
    if space.inferred:
        stats["import_warnings"].append(
            f"classes are numbered by the sorted labels of this CSV {list(space.classes)}; another CSV (a test fold "
            "without some class) will number them differently. Pass --protocol NAME or --classes FILE "
            "(e.g. this import's classes.json) to fix the order"
        )
    return stats
