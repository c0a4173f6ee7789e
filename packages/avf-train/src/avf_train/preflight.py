"""Checks that run before a training run starts its workers: does the data fit the run?

Each check turns a failure that used to appear as a worker traceback at the first step (or, for
label maps, as silently wrong predictions) into one ``avf-train: error:`` line that names the
numbers. The label-map checks are what keeps one class order from import to score:

* the train shards, the ``--val-data`` shards and a resumed run must carry the same label map;
* ``--num-classes`` must equal the map's size (it is inferred from the map when not given);
* every label must lie inside the map (or, with ``data.label_map``, have a name the map knows);
* an ``--init`` checkpoint whose head would be loaded must name the same classes.
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig
from .errors import DataError, StageError
from .labels import RunLabels, run_labels
from .shardinfo import ShardInfo


def stream_clips(counts: list[int], units: int) -> int:
    """The fewest clips one loader unit can get in a pass (ClipStream's split, any shard order).

    With at least as many shards as units a unit reads whole shards, ``shards[unit::units]`` of a
    shuffled list, so in the worst pass it gets the ``len // units`` smallest shards; with fewer
    shards than units the clips themselves are dealt round-robin.
    """
    if units <= 0:
        return 0
    if len(counts) >= units:
        return sum(sorted(counts)[: len(counts) // units])
    return sum(counts) // units


def check_batch_fits(info: ShardInfo, batch_size: int, world_size: int, num_workers: int) -> None:
    """Refuse a run whose loader would find no full batch in some pass (before workers start).

    The fix is a pair: a batch size and a worker count that work *together* (fewer workers give
    each stream more clips), so the message names whole command lines' worth of both.
    """
    workers = max(1, num_workers)
    units = world_size * workers
    least = stream_clips(info.counts, units)
    if least >= batch_size:
        return
    pairs = " or ".join(
        f"--batch-size {b} --num-workers {w}" for b, w in batch_fixes(info.counts, batch_size, world_size, workers)
    )
    fix = f"use {pairs}, or add clips" if pairs else "add clips or run on fewer processes"
    raise DataError(
        f"too few clips for the batch size: {info.total} clips in {len(info.counts)} shard(s) ({info.where()}) "
        f"cannot fill --batch-size {batch_size} on {workers} loader worker(s) x {world_size} process(es): "
        f"each of the {units} streams fills whole batches and the smallest gets {least} clips per pass; {fix}"
    )


def batch_fixes(counts: list[int], batch_size: int, world_size: int, workers: int) -> list[tuple[int, int]]:
    """(batch size, workers) pairs that fit the shards: the batch kept with fewer workers, the workers
    kept with a smaller batch, else the most workers that get any clip with the batch they can fill."""
    fixes = []
    keep_batch = [w for w in range(workers - 1, 0, -1) if stream_clips(counts, world_size * w) >= batch_size]
    least = stream_clips(counts, world_size * workers)
    if least >= 1:
        fixes.append((least, workers))
    if keep_batch:
        fixes.append((batch_size, keep_batch[0]))
    if not fixes:
        some = [w for w in range(workers - 1, 0, -1) if stream_clips(counts, world_size * w) >= 1]
        if some:
            fixes.append((stream_clips(counts, world_size * some[0]), some[0]))
    return fixes


def _labels_outside(info: ShardInfo, num_classes: int) -> list[int]:
    return sorted(label for label in info.labels if not 0 <= label < num_classes)


def _check_in_range(info: ShardInfo, num_classes: int, what: str) -> None:
    bad = _labels_outside(info, num_classes)
    if bad:
        counts = ", ".join(f"label {b} in {info.labels[b]} clip(s)" for b in bad[:5])
        raise DataError(
            f"{what} {info.where()} hold labels outside the label map of {num_classes} classes "
            f"(0..{num_classes - 1}): {counts}"
        )


def _check_names_map(info: ShardInfo, labels: RunLabels, what: str) -> None:
    """Every clip of a remapped run must have a name the map places."""
    name = labels.space.name
    if info.unnamed:
        raise DataError(
            f"label map {name!r} maps clips by 'label_name', but {info.unnamed} clips of "
            f"{what} {info.where()} have only an integer label"
        )
    unknown = []
    for label in info.label_names:
        try:
            if labels.space.resolve(label) is None:
                unknown.append(label)
        except ValueError:
            unknown.append(label)
    if unknown:
        raise DataError(
            f"{what} {info.where()} hold labels outside the label map {name!r}: "
            f"{sorted(unknown)[:8]} ({sum(info.label_names[u] for u in unknown)} clips); its classes "
            f"are {list(labels.space.classes)}"
        )


def resolve_labels(cfg: TrainConfig, train: ShardInfo, val: ShardInfo | None) -> RunLabels | None:
    """Fix the run's label map and number of outputs from the data, refusing every disagreement.

    Writes the resolved map into ``cfg.data.label_map`` (the one field every later reader uses)
    and its size into ``cfg.finetune.num_classes``.
    """
    if cfg.finetune.task == "dea":
        _resolve_targets(cfg, train, val)
        return None
    if train.unlabelled:
        raise DataError(
            f"{len(train.unlabelled)} of {train.total} clips have no label (first: "
            f"{train.unlabelled[0]}); {cfg.stage} needs labelled shards: make them with "
            "`avf-data import labels.csv --protocol NAME`"
        )
    labels = run_labels(cfg)
    if labels is not None and labels.remap:
        _check_names_map(train, labels, "the shards")
        if val is not None:
            _check_names_map(val, labels, "--val-data")
    else:
        labels = _shards_labels(train, val, labels)
    f = cfg.finetune
    if labels is None:
        if f.num_classes <= 0:
            raise StageError(
                "set --num-classes (finetune.num_classes): the shards carry no label map to infer it "
                "from (make them with `avf-data import --protocol NAME`)"
            )
    else:
        if f.num_classes and f.num_classes != labels.space.num_classes:
            raise StageError(
                f"--num-classes {f.num_classes} differs from the label map ({labels.space.num_classes} classes: "
                f"{', '.join(labels.space.classes)}; {labels.space.title}); drop --num-classes to use the map"
            )
        f.num_classes = labels.space.num_classes
        cfg.data.label_map = labels.to_config()
    if labels is None or not labels.remap:
        _check_in_range(train, f.num_classes, "the shards")
        if val is not None:
            _check_in_range(val, f.num_classes, "--val-data")
    return labels


def _shards_labels(train: ShardInfo, val: ShardInfo | None, pinned: RunLabels | None) -> RunLabels | None:
    """The map the training shards carry; ``--val-data`` and a resumed run's map must be the same."""
    space = train.label_space()
    if pinned is not None:
        if space is not None and space.classes != pinned.space.classes:
            raise DataError(
                f"the shards ({space.title}) number classes as {list(space.classes)}, but this run "
                f"({pinned.space.title}) as {list(pinned.space.classes)}"
            )
        space = pinned.space
    if val is not None:
        val_space = val.label_space()
        if val_space is not None and space is not None and val_space.classes != space.classes:
            raise DataError(
                f"the training shards number classes as {list(space.classes)} ({space.title}) but "
                f"--val-data as {list(val_space.classes)} ({val_space.title}); import every fold "
                "with the same --protocol (or --classes FILE)"
            )
        if val_space is not None and space is None:
            raise DataError(
                f"--val-data carries the label map {list(val_space.classes)} but the training shards "
                "carry none; import both with the same --protocol"
            )
    return RunLabels(space, remap=False) if space is not None else None


def _resolve_targets(cfg: TrainConfig, train: ShardInfo, val: ShardInfo | None) -> None:
    """DEA: every training clip needs a ``targets`` list, all of one length = the outputs."""
    if train.no_targets:
        raise DataError(
            f"task dea needs 'targets' in every clip: {train.no_targets} of {train.total} clips in "
            f"{train.where()} have none (import them with target_* columns)"
        )
    if len(train.target_sizes) > 1:
        raise DataError(f"the clips' targets differ in length: {dict(train.target_sizes)}")
    (size,) = train.target_sizes
    f = cfg.finetune
    if f.num_classes and f.num_classes != size:
        raise StageError(f"--num-classes {f.num_classes} differs from the {size} targets each clip carries")
    f.num_classes = size
    if val is not None and val.target_sizes and set(val.target_sizes) != {size}:
        raise DataError(f"--val-data targets have length(s) {sorted(val.target_sizes)}, the training ones {size}")


def check_init_classes(cfg: TrainConfig, ckpt: dict[str, Any]) -> str | None:
    """Refuse an ``--init`` whose classifier head would be loaded under other class names.

    avf-models loads a head whose shape matches; if the checkpoint names its outputs differently
    (or in another order) than this run's label map, class i would start as the old class i.
    Returns a note for the log when nothing is wrong but something is worth saying.
    """
    if cfg.finetune.task == "dea":
        return None
    saved = ((ckpt.get("config") or {}).get("data") or {}).get("label_map")
    names = ckpt.get("class_names") or (list(saved.get("classes") or []) if isinstance(saved, dict) else [])
    head = (ckpt.get("model") or {}).get("head.weight")
    rows = int(head.shape[0]) if head is not None and hasattr(head, "shape") else len(names)
    if rows != cfg.finetune.num_classes:
        return None  # a head of another size is dropped: nothing carries over
    labels = run_labels(cfg)
    if names and labels is not None:
        if [str(n).lower() for n in names] != [c.lower() for c in labels.space.classes]:
            raise StageError(
                f"--init {ckpt.get('path')} names its {rows} outputs {list(names)}, this run's label "
                f"map is {list(labels.space.classes)}: its head would be loaded with the classes in the "
                "wrong places; fine-tune from a checkpoint with the same map or another size of head"
            )
        return None
    if head is not None:
        return (
            f"warning: --init {ckpt.get('path')} has a {rows}-class head that is loaded, but "
            f"{'it' if not names else 'this run'} names no classes, so their order cannot be checked"
        )
    return None
