"""Shards in, predictions file out: every clip as segments x crops test views, one JSONL row per view.

The rows are what avf-eval reads (``avf_eval.prediction_reader``), in its field names: ``key``,
``label``, ``view``, ``epoch``, ``fold`` and ``logits`` for classification, ``prediction`` (raw
outputs) with the ``targets`` list as ``label`` for DEA regression. ``probs``, ``segment`` and
``crop`` are extra fields for people; avf-eval ignores them. avf-eval averages the views of a clip
itself, so nothing is aggregated here beyond an optional quick accuracy. Every row carries the
model's label map (``classes``), and the shards must carry the same one: a test fold numbered
differently from the training folds is refused here, not scored wrongly later.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from avf_data.labels import from_names

from . import distributed as D
from .data import ClipStream, make_loader, resolve_shards
from .errors import DataError, one_line
from .labels import RunLabels, run_labels
from .modeling import Predictor, load_predictor
from .shardinfo import scan_shards

PREDICTIONS = "predictions.jsonl"  # the file name inside --out (and inside a fine-tuning run folder)


def predict_shards(
    checkpoint: str | os.PathLike,
    data: str,
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    fold: str | int | None = None,
    data_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/predictions.jsonl`` and return a summary with clip-level top-1 when labels exist.

    ``data_overrides`` change ``data.*`` settings of the checkpoint's config (e.g.
    ``{"clip": {"test_segments": 1}}``). Under torchrun every rank predicts its share of the clips into
    ``predictions.jsonl.part<rank>`` and rank 0 concatenates the parts (rank order).
    """
    info = D.init(device)
    predictor = load_predictor(checkpoint, info.device, data_overrides)
    out = Path(out_dir) / PREDICTIONS
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        _write_rows(predictor, data, out, batch_size, num_workers, precision, fold, info)
    if info.distributed:
        torch.distributed.barrier()
        if info.is_main:
            tmp = out.with_name(out.name + ".tmp")
            with open(tmp, "w") as fh:
                for r in range(info.world_size):
                    piece = out.with_name(out.name + f".part{r}")
                    fh.write(piece.read_text())
                    piece.unlink()
            tmp.replace(out)
        D.shutdown()
    return summarize(out, predictor.views.num_views, predictor.path) if info.is_main else {}


def _write_rows(
    predictor: Predictor,
    data: str,
    out: Path,
    batch_size: int,
    num_workers: int,
    precision: str,
    fold: str | int | None,
    info: D.DistInfo,
) -> None:
    """This rank's rows into ``out.part<rank>`` (or ``out.tmp``, renamed to ``out`` when complete)."""
    regression = predictor.regression
    names = [] if regression else list(predictor.names()[0])
    paths = resolve_shards(data)
    labels = None if regression else _predict_labels(predictor, names)
    if labels is not None and not labels.remap:  # the shards' map must be the model's (before any decoding)
        _check_test_labels(predictor, data, paths, labels)
    stream = ClipStream(
        paths,
        predictor.views,
        batch_size,
        train=False,
        seed=predictor.config.run.seed,
        rank=info.rank,
        world_size=info.world_size,
        num_workers=num_workers,
        labels=labels,
    )
    fixed: dict[str, Any] = {"epoch": int(math.ceil(float(predictor.checkpoint.get("epoch", 0)) - 1e-9))}
    if fold is not None:  # epochs completed (partial counts as one) and the fold, on every row
        fixed["fold"] = fold
    part = out.with_name(out.name + (f".part{info.rank}" if info.distributed else ".tmp"))
    batches = iter(make_loader(stream, num_workers))
    with open(part, "w") as fh:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except DataError as exc:  # raised in a loader worker: torch wraps it in its traceback
                part.unlink(missing_ok=True)
                raise DataError(one_line(exc)) from None
            outputs = predictor(batch["video"], batch["audio"], precision)
            for row in _rows(predictor, batch, outputs, names, fixed):
                fh.write(json.dumps(row) + "\n")
    if not info.distributed:
        part.replace(out)


def _check_test_labels(predictor: Predictor, data: str, paths: list[str], labels: RunLabels) -> None:
    """A test fold numbered differently from the training folds is refused, not scored wrongly later."""
    space = scan_shards(paths, read_meta=True).label_space()
    if space is not None and space.classes != labels.space.classes:
        raise DataError(
            f"{data} number classes as {list(space.classes)} ({space.title}) but "
            f"{predictor.path} was trained on {list(labels.space.classes)}; import the test data with the "
            "training data's --protocol / --classes"
        )


def _rows(
    predictor: Predictor, batch: dict[str, Any], outputs: torch.Tensor, names: list[str], fixed: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per view in avf-eval's field names (see the module docstring)."""
    crops = predictor.views.test_crops
    probs = None if predictor.regression else outputs.softmax(dim=-1)
    protocol = predictor.checkpoint.get("label_protocol")
    rows = []
    for i, key in enumerate(batch["key"]):
        view = int(batch["view"][i])
        row: dict[str, Any] = {"key": key, "label": int(batch["label"][i]), "view": view}
        row.update(segment=view // crops, crop=view % crops, **fixed)
        if predictor.regression:
            if "targets" in batch:
                row["label"] = batch["targets"][i].tolist()
            row["prediction"] = outputs[i].tolist()
        else:
            row.update(logits=outputs[i].tolist(), probs=probs[i].tolist())
            if names:
                row["classes"] = names
                if protocol:
                    row["protocol"] = protocol
        rows.append(row)
    return rows


def _predict_labels(predictor: Predictor, names: list[str]) -> RunLabels | None:
    """The training run's map (a remap such as cea13 places clips by name), else the checkpoint's names."""
    try:
        labels = run_labels(predictor.config)
    except ValueError:  # a label-map YAML of the training machine: the checkpoint's names still hold
        labels = None
    if labels is not None and labels.remap:
        return labels
    return RunLabels(from_names(names, "checkpoint"), remap=False) if names else None


def summarize(path: Path, views_per_clip: int, checkpoint: str) -> dict[str, Any]:
    """Row/clip counts and clip-level top-1 (views' probabilities averaged) of a predictions file."""
    clips: dict[str, tuple[int, torch.Tensor | None]] = {}
    rows = 0
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows += 1
        probs = torch.tensor(row["probs"]) if "probs" in row else None
        prev = clips.get(row["key"])
        clips[row["key"]] = (row["label"], probs if prev is None or prev[1] is None else prev[1] + probs)
    summary: dict[str, Any] = {
        "rows": rows,
        "clips": len(clips),
        "views_per_clip": views_per_clip,
        "checkpoint": checkpoint,
        "out": str(path),
    }
    labelled = [(label, p) for label, p in clips.values() if isinstance(label, int) and label >= 0 and p is not None]
    if labelled:
        summary["top1"] = sum(int(p.argmax()) == label for label, p in labelled) / len(labelled)
    return summary
