"""The predictions reader: JSONL or CSV files in, one validated, columnar table out.

The format is the contract between avf-train (which writes it) and avf-eval (which scores
it); see the package README for the full description. One row = one view of one clip at one
epoch of one fold::

    {"key": "clip_0001", "video": "clip_0001", "view": 0, "fold": 1, "epoch": 99,
     "label": 3, "logits": [0.1, -1.2, 2.3, 0.0]}

* ``key``      clip id (required)
* ``video``    id shared by the views of one video (default: ``key``)
* ``view``     int view index (default 0)
* ``fold``     fold id, int or str (default: the file's position among the files given,
  1, 2, ..., so ``fold1.jsonl ... fold5.jsonl`` without the field still make five folds)
* ``epoch``    int (optional; without it the row belongs to the only model of its fold)
* ``label``    int class id, or a list of floats for regression
* ``logits``   raw scores, softmaxed per view before averaging, **or**
  ``prediction`` final outputs: probabilities (averaged as given) or a single int class id
  for classification, raw values for regression.

* ``classes``  optional: the class names of the model's outputs in index order (the label map
  avf-train copies from the shards). With a protocol, they must be the protocol's classes in
  its order, otherwise the file is refused: scoring it would credit one class's clips to another.

avf-train writes these names (``avf_train.predict_shards``); extra fields such as its ``probs``,
``segment`` and ``crop`` are ignored.

CSV files carry the same columns; list fields are either JSON lists in one cell
(``"[0.1, 2.0]"``) or numbered columns ``logits_0, logits_1, ...``.

Every problem is reported as ``FILE:LINE: what is wrong`` because these files are written by
long training runs and a vague error would mean reading megabytes by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .protocols.types import Protocol


class PredictionFormatError(ValueError):
    """A predictions file could not be read; the message names the file and line."""


@dataclass(frozen=True)
class PredictionTable:
    """All rows of one or more prediction files, as parallel arrays.

    ``outputs`` holds the model output per row; ``is_logits`` says whether that row gave
    ``logits`` (softmax still to apply) or ``prediction`` (already final). ``labels`` is
    ``(N,)`` int for classification and ``(N, D)`` float for regression. ``epochs`` uses -1
    for rows without an epoch. ``sources`` keeps ``file:line`` for error messages later on.
    """

    keys: NDArray[np.str_]
    videos: NDArray[np.str_]
    views: NDArray[np.int64]
    folds: NDArray[np.str_]
    epochs: NDArray[np.int64]
    labels: NDArray[Any]
    outputs: NDArray[np.float64]
    is_logits: NDArray[np.bool_]
    sources: NDArray[np.str_]
    class_names: tuple[str, ...] = ()  # the label map the rows carry (checked against the protocol)

    def __len__(self) -> int:
        return int(self.keys.size)

    def take(self, mask: NDArray[np.bool_]) -> PredictionTable:
        """Rows where ``mask`` is true, as a new table."""
        arrays = {name: getattr(self, name)[mask] for name in self.__dataclass_fields__ if name != "class_names"}
        return PredictionTable(**arrays, class_names=self.class_names)


@dataclass(frozen=True)
class _Row:
    key: str
    video: str
    view: int
    fold: str
    epoch: int
    label: int | tuple[float, ...]
    output: tuple[float, ...]
    is_logits: bool
    source: str


def _fail(source: str, message: str) -> PredictionFormatError:
    return PredictionFormatError(f"{source}: {message}")


def _float_list(value: Any, field: str, source: str) -> tuple[float, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise _fail(source, f"{field} is not a JSON list ({error.msg})") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(source, f"{field} must be a non-empty list of numbers, got {value!r}")
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise _fail(source, f"{field} holds a non-number: {value!r}") from None
    if not all(math.isfinite(v) for v in numbers):
        raise _fail(source, f"{field} holds NaN or infinity")
    return numbers


def _int(value: Any, field: str, source: str) -> int:
    if isinstance(value, bool):
        raise _fail(source, f"{field} must be an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(source, f"{field} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise _fail(source, f"{field} must be an integer, got {value!r}")
    return int(number)


def _looks_like_list(value: Any) -> bool:
    return isinstance(value, list) or (isinstance(value, str) and value.lstrip().startswith("["))


def _present(record: dict[str, Any], field: str) -> bool:
    return field in record and record[field] not in (None, "")


def _parse(record: dict[str, Any], source: str, protocol: Protocol | None, default_fold: str = "1") -> _Row:
    if not _present(record, "key"):
        raise _fail(source, "missing 'key' (the clip id)")
    key = str(record["key"])
    has_logits, has_prediction = _present(record, "logits"), _present(record, "prediction")
    if has_logits == has_prediction:
        raise _fail(source, "give exactly one of 'logits' or 'prediction'")
    if not _present(record, "label"):
        raise _fail(source, "missing 'label'")
    regression = protocol.kind == "regression" if protocol else _looks_like_list(record["label"])
    if regression:
        label: int | tuple[float, ...] = _float_list(record["label"], "label", source)
    else:
        label = _int(record["label"], "label", source)
    raw_output = record["logits"] if has_logits else record["prediction"]
    output_is_class_id = has_prediction and not regression and not _looks_like_list(raw_output)
    if output_is_class_id:
        class_id = _int(raw_output, "prediction", source)
        width = protocol.output_size if protocol else None
        if width is None:
            raise _fail(source, "a class-id prediction needs --protocol to know the class count")
        if not 0 <= class_id < width:
            raise _fail(source, f"predicted class {class_id} out of range 0..{width - 1}")
        output = tuple(1.0 if i == class_id else 0.0 for i in range(width))
    else:
        output = _float_list(raw_output, "logits" if has_logits else "prediction", source)
    if protocol is not None:
        _check_against(protocol, label, output, source)
    return _Row(
        key=key,
        video=str(record["video"]) if _present(record, "video") else key,
        view=_int(record["view"], "view", source) if _present(record, "view") else 0,
        fold=_fold_id(record["fold"]) if _present(record, "fold") else default_fold,
        epoch=_int(record["epoch"], "epoch", source) if _present(record, "epoch") else -1,
        label=label,
        output=output,
        is_logits=has_logits,
        source=source,
    )


def _fold_id(value: Any) -> str:
    """Folds compare as strings; ``1``, ``1.0`` and ``"1"`` are the same fold."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _check_against(protocol: Protocol, label: int | tuple[float, ...], output: tuple[float, ...], source: str) -> None:
    width = protocol.output_size
    if len(output) != width:
        what = "classes" if protocol.kind == "classification" else "dimensions"
        raise _fail(source, f"output has {len(output)} values, protocol {protocol.name} has {width} {what}")
    if isinstance(label, int) and not 0 <= label < width:
        raise _fail(source, f"label {label} out of range 0..{width - 1} for protocol {protocol.name}")
    if isinstance(label, tuple) and len(label) != width:
        raise _fail(source, f"label has {len(label)} values, protocol {protocol.name} has {width} dimensions")


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            source = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise _fail(source, f"not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise _fail(source, "each line must be a JSON object")
            yield source, record


_NUMBERED = re.compile(r"^(logits|prediction|label)_(\d+)$")


def _csv_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            return
        numbered: dict[str, list[tuple[int, str]]] = {}
        for column in reader.fieldnames:
            match = _NUMBERED.match(column)
            if match:
                numbered.setdefault(match.group(1), []).append((int(match.group(2)), column))
        for row_index, row in enumerate(reader):
            source = f"{path}:{row_index + 2}"  # line 1 is the header
            if None in row:
                raise _fail(source, "more cells than header columns")
            record: dict[str, Any] = {k: v for k, v in row.items() if not _NUMBERED.match(k)}
            for field, columns in numbered.items():
                cells = [row[column] for _, column in sorted(columns)]
                if any(cell not in (None, "") for cell in cells):
                    record[field] = cells
            yield source, record


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise PredictionFormatError(f"{path}: no such predictions file")
    if path.suffix.lower() == ".csv":
        return _csv_records(path)
    return _jsonl_records(path)


def _table(rows: Sequence[_Row], regression: bool) -> PredictionTable:
    widths = {len(r.output) for r in rows}
    if len(widths) > 1:
        first = rows[0]
        odd = next(r for r in rows if len(r.output) != len(first.output))
        raise _fail(odd.source, f"output has {len(odd.output)} values but {first.source} has {len(first.output)}")
    labels: NDArray[Any]
    if regression:
        label_widths = {len(r.label) for r in rows}  # type: ignore[arg-type]
        if len(label_widths) > 1:
            raise PredictionFormatError(f"{rows[0].source}: regression labels differ in length across rows")
        labels = np.array([r.label for r in rows], dtype=np.float64)
    else:
        labels = np.array([r.label for r in rows], dtype=np.int64)
    return PredictionTable(
        keys=np.array([r.key for r in rows], dtype=str),
        videos=np.array([r.video for r in rows], dtype=str),
        views=np.array([r.view for r in rows], dtype=np.int64),
        folds=np.array([r.fold for r in rows], dtype=str),
        epochs=np.array([r.epoch for r in rows], dtype=np.int64),
        labels=labels,
        outputs=np.array([r.output for r in rows], dtype=np.float64),
        is_logits=np.array([r.is_logits for r in rows], dtype=bool),
        sources=np.array([r.source for r in rows], dtype=str),
    )


def _check_label_map(
    record: dict[str, Any], source: str, protocol: Protocol, seen: dict[tuple[str, ...], str | None]
) -> None:
    """Refuse a row whose ``classes`` (the model's label map) are not the protocol's, in order."""
    names = record.get("classes")
    if names in (None, ""):
        return
    if isinstance(names, str):
        try:
            names = json.loads(names)
        except json.JSONDecodeError:
            names = [n.strip() for n in names.split(",")]
    if not isinstance(names, list):
        raise _fail(source, f"classes must be a list of class names, got {names!r}")
    key = tuple(str(n) for n in names)
    if key not in seen:
        seen[key] = protocol.labels.check_names(key) if protocol.labels is not None else None
    if seen[key]:
        raise _fail(
            source,
            f"{seen[key]}; make the shards with `avf-data import --protocol {protocol.name}` "
            "and train on them, or score with the protocol the model was trained for",
        )


def _row_names(record: dict[str, Any]) -> tuple[str, ...]:
    names = record.get("classes")
    if isinstance(names, str):
        try:
            names = json.loads(names)
        except json.JSONDecodeError:
            names = names.split(",")
    return tuple(str(n).strip() for n in names) if isinstance(names, list) else ()


def load_predictions(paths: Iterable[str | Path], protocol: Protocol | None = None) -> PredictionTable:
    """Read and validate prediction files; with a protocol, widths, label ranges and the rows'
    label map (``classes``) are checked."""
    rows: list[_Row] = []
    files = [Path(p) for p in paths]
    if not files:
        raise PredictionFormatError("no predictions files given")
    seen: dict[tuple[str, ...], str | None] = {}
    class_names: tuple[str, ...] = ()
    for index, path in enumerate(files, start=1):
        before = len(rows)
        for source, record in _records(path):
            if protocol is not None:
                _check_label_map(record, source, protocol, seen)
            class_names = class_names or _row_names(record)
            rows.append(_parse(record, source, protocol, str(index)))
        if len(rows) == before:
            raise PredictionFormatError(f"{path}: no prediction rows")
    kinds = {isinstance(r.label, tuple) for r in rows}
    if len(kinds) > 1:
        odd = next(r for r in rows if isinstance(r.label, tuple) != isinstance(rows[0].label, tuple))
        raise _fail(odd.source, "mixes regression (list) and class-id labels with earlier rows")
    table = _table(rows, regression=kinds == {True})
    return dataclasses.replace(table, class_names=class_names) if class_names else table
