"""``avf-data import CSV --out DIR``: labelled shards for fine-tuning and evaluation.

CSV columns (a header row is optional when the order is ``path,label[,subject,fold]``):

``path``     video file, absolute or relative to the CSV's folder
``label``    class name or class index
``subject``  speaker / subject id (optional; used for subject-independent folds)
``fold``     integer fold (optional)
``target*``  optional regression targets: one column ``targets`` holding numbers separated
             by spaces or ``;``, or several numeric columns named ``target_<name>``

Every row becomes (after curation with lenient options, or ``--no-curate``) one sample in
the usual format plus ``cls`` and json ``label``/``label_name``/``subject``/``fold``
[/``targets``]. ``classes.json`` lists the class names in index order. Bad rows go to
``rejects.jsonl`` (stage "import") and the import goes on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .build import _append_done, build
from .config import BuildConfig, lenient
from .media import path_text


def read_label_csv(csv_path: str | os.PathLike, classes: list[str] | None = None
                   ) -> tuple[dict[str, dict[str, Any]], list[str], list[dict[str, Any]]]:
    """Parse the CSV. Returns ({path: label fields}, class names, reject rows)."""
    csv_path = Path(csv_path)
    base = csv_path.resolve().parent
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise ValueError(f"{csv_path} holds no rows")
    head = [c.strip().lower() for c in rows[0]]
    if "path" in head and "label" in head:
        columns, body, first_line = head, rows[1:], 2
    else:
        columns, body, first_line = ["path", "label", "subject", "fold"][: max(len(r) for r in rows)], rows, 1
    rejects: list[dict[str, Any]] = []
    parsed: list[tuple[str, str, dict[str, Any], int]] = []
    seen: set[str] = set()
    for n, r in enumerate(body, start=first_line):
        rec = {c: (r[i].strip() if i < len(r) else "") for i, c in enumerate(columns)}
        where = f"{csv_path.name}:{n}"

        def bad(reason: str) -> None:
            rejects.append({"source": path_text(rec.get("path") or where), "input_id": "", "start": 0.0, "end": 0.0,
                            "seconds": 0.0, "stage": "import", "reason": f"{where}: {reason}"})

        if not rec.get("path"):
            bad("empty path")
            continue
        if not rec.get("label"):
            bad("empty label")
            continue
        path = rec["path"] if os.path.isabs(rec["path"]) else str(base / rec["path"])
        if os.path.abspath(path) in seen:
            bad("duplicate path (first row wins)")
            continue
        extra: dict[str, Any] = {"subject": rec.get("subject") or None, "fold": None}
        if rec.get("fold"):
            try:
                extra["fold"] = int(rec["fold"])
            except ValueError:
                bad(f"fold {rec['fold']!r} is not an integer")
                continue
        try:
            targets = _targets(rec)
        except ValueError as exc:
            bad(str(exc))
            continue
        if targets is not None:
            extra["targets"] = targets
        seen.add(os.path.abspath(path))
        parsed.append((path, rec["label"], extra, n))
    # class names: given list, else indices if every label is an integer, else sorted names
    if classes is None:
        labels = [lab for _, lab, _, _ in parsed]
        if labels and all(_is_int(lab) for lab in labels):
            classes = [str(i) for i in range(max(int(lab) for lab in labels) + 1)]
        else:
            classes = sorted({lab for lab in labels if not _is_int(lab)})
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, dict[str, Any]] = {}
    for path, lab, extra, n in parsed:
        if lab in index:
            i = index[lab]
        elif _is_int(lab) and 0 <= int(lab) < len(classes):
            i = int(lab)
        else:
            rejects.append({"source": path_text(path), "input_id": "", "start": 0.0, "end": 0.0, "seconds": 0.0,
                            "stage": "import", "reason": f"{csv_path.name}:{n}: unknown label {lab!r}"})
            continue
        out[path] = {"label": i, "label_name": classes[i], **extra}
    return out, classes, rejects


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


def import_csv(csv_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: BuildConfig | None = None, *,
               curate: bool = True, strict: bool = False, classes: list[str] | None = None,
               **build_kwargs: Any) -> dict[str, Any]:
    """Build labelled shards from a CSV; returns the build stats (plus ``classes``)."""
    cfg = cfg or BuildConfig()
    if not strict:
        cfg = lenient(cfg)
    if not curate:
        cfg.curate = False
    labels, class_names, rejects = read_label_csv(csv_path, classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps({"classes": class_names, "num_classes": len(class_names)},
                                                 indent=2) + "\n", encoding="utf-8")
    # bad CSV rows are logged once, as a pseudo-input, so that resumes keep them
    rid = "csvrows_" + hashlib.sha1(os.fsencode(os.path.abspath(csv_path))).hexdigest()[:8]
    from .build import read_done

    if rid not in read_done(out):
        with open(out / "done.jsonl", "a", encoding="utf-8") as log:
            _append_done(log, {"input_id": rid, "source": path_text(csv_path), "seconds": 0.0, "frames": 0,
                               "manifest": [], "rejects": rejects, "stages": {}, "shards": [],
                               "sync_methods": [], "proc_seconds": 0.0, "decode_seconds": 0.0})
    stats = build(list(labels), out, cfg, labels=labels, **build_kwargs)
    stats["classes"] = class_names
    return stats
