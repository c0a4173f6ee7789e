"""Streaming, resumable WebDataset loader over ``avf_data.shards``.

Why not ``wds.WebDataset``: exact ``--resume`` needs to know, for every batch, where in the
stream it came from, and to restart each worker at that point with the same shuffle and the same
augmentation draws. So the stream is built here from the shared reader (``iter_raw_samples``,
``decode_sample``) with explicit rank/worker splitting:

* The stream is cut into ``world_size x num_workers`` *units*; unit ``rank*W + w`` takes every
  ``units``-th shard of a per-pass shuffled shard list (or, with fewer shards than units, every
  ``units``-th sample, so tiny test sets still work on many workers).
* Each unit loops over passes forever while training (every rank therefore runs the same number of
  steps, which DDP needs); a pass shuffles with a buffer seeded by (seed, pass, unit).
* A training batch holds ``batch_size`` clips, each as ``repeats`` augmented copies (the official
  ``--num_sample`` meaning), so the model sees ``batch_size x repeats`` views.
* Every clip's augmentation uses a generator seeded by (seed, pass, unit, sample, repeat), and a
  batch never straddles two passes. A batch is tagged with (worker, pass, batch-in-pass).
* The DataLoader reads workers round-robin, so batch ``k`` comes from worker ``k % W``. On resume
  worker roles are rotated by the number of batches already consumed and each worker skips (without
  decoding) to its next batch. Resuming therefore needs the same world size, worker count and batch
  size; otherwise the trainer restarts the data at the pass boundary and says so.
* Loader workers watch the process that owns the loader (the trainer, or one torchrun rank) and
  exit as soon as it is gone, even after ``kill -9``: otherwise they would hold their memory
  forever, waiting for requests that never come.
"""

from __future__ import annotations

import os
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avf_data.shards import decode_sample, expand_shards, iter_raw_samples

from .errors import DataError
from .labels import LabelMap
from .transforms import ClipTransformConfig, make_view


def resolve_shards(spec: str) -> list[str]:
    """Comma-separated globs/folders -> sorted shard paths (FileNotFoundError naming the pattern)."""
    if not spec:
        raise FileNotFoundError("no shards given (set --shards / --data or data.shards)")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return sorted({p for part in parts for p in expand_shards(part)})


def count_samples(paths: list[str]) -> int:
    """Number of samples (distinct keys) in the shards, reading tar headers only."""
    total = 0
    for path in paths:
        keys: set[str] = set()
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    keys.add(member.name.rsplit("/", 1)[-1].partition(".")[0])
        total += len(keys)
    return total


@dataclass
class StreamState:
    """Where each logical worker resumes: next (pass, batch-in-pass), plus batches consumed."""

    consumed: int = 0  # batches delivered to the trainer (this rank)
    workers: dict[int, tuple[int, int]] = field(default_factory=dict)  # logical worker -> (pass, next batch)
    num_workers: int = 1
    world_size: int = 1
    batch_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "num_workers": self.num_workers, "world_size": self.world_size,
                "batch_size": self.batch_size,
                "workers": {str(k): [int(p), int(b)] for k, (p, b) in self.workers.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamState":
        return cls(consumed=int(d["consumed"]), num_workers=int(d["num_workers"]),
                   world_size=int(d["world_size"]), batch_size=int(d["batch_size"]),
                   workers={int(k): (int(v[0]), int(v[1])) for k, v in d["workers"].items()})

    def advance(self, worker: int, pass_index: int, batch_index: int) -> None:
        self.consumed += 1
        self.workers[worker] = (pass_index, batch_index + 1)


def _seed(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])


class ClipStream(IterableDataset):
    """Batches of model inputs from shards; see the module docstring for the splitting scheme.

    ``train=True``: infinite, shuffled, augmented, drop-last per pass. ``train=False``: one ordered
    pass, every clip expanded into ``transform.num_views`` deterministic test views, last batch kept.
    """

    def __init__(self, shards: list[str], transform: ClipTransformConfig, batch_size: int, *,
                 train: bool, seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 shuffle_buffer: int = 256, repeats: int = 1, label_map: LabelMap | None = None,
                 labelled: bool = False, state: StreamState | None = None,
                 classes: tuple[str, ...] = (), num_classes: int = 0) -> None:
        """``batch_size``: clips per batch when training (each as ``repeats`` views), views per
        batch at test time. ``classes``: the label map the clips must carry (when they carry
        one); ``num_classes`` > 0 bounds integer labels."""
        super().__init__()
        self.shards, self.transform, self.batch_size = list(shards), transform, batch_size
        self.train, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.num_workers = max(1, num_workers)
        self.shuffle_buffer, self.repeats = shuffle_buffer, max(1, repeats)
        self.label_map, self.labelled = label_map, labelled
        self.classes, self.num_classes = tuple(classes), num_classes
        self.state = state or StreamState()

    @property
    def views_per_batch(self) -> int:
        return self.batch_size * self.repeats if self.train else self.batch_size

    # ---- splitting -------------------------------------------------------------------------

    def _units(self) -> int:
        return self.world_size * self.num_workers

    def _raw_for_unit(self, unit: int, pass_index: int) -> Iterator[dict[str, Any]]:
        units = self._units()
        order = list(self.shards)
        if self.train:
            np.random.default_rng(_seed(self.seed, 1, pass_index)).shuffle(order)
        if len(order) >= units:
            yield from iter_raw_samples(order[unit::units])
        else:
            for i, raw in enumerate(iter_raw_samples(order)):
                if i % units == unit:
                    yield raw

    def _shuffled(self, raw: Iterator[dict[str, Any]], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        if not self.train or self.shuffle_buffer <= 1:
            yield from raw
            return
        buf: list[dict[str, Any]] = []
        for item in raw:
            buf.append(item)
            if len(buf) >= self.shuffle_buffer:
                j = int(rng.integers(len(buf)))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        while buf:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()

    # ---- per-sample ----------------------------------------------------------------------

    def _label(self, meta: dict[str, Any], key: str) -> tuple[int, list[float] | None]:
        targets = meta.get("targets")
        carried = meta.get("classes")
        if self.label_map is None and self.classes and carried is not None and tuple(carried) != self.classes:
            raise DataError(f"clip {key!r} is numbered by the label map {list(carried)}, this model by "
                            f"{list(self.classes)}; import every fold with the same --protocol / --classes")
        if self.label_map is not None:
            try:
                return self.label_map.index(meta), targets
            except KeyError as exc:
                raise DataError(f"clip {key!r}: {exc.args[0]}") from None
        label = meta.get("label")
        if label is None:
            if self.labelled and targets is None:
                raise DataError(f"clip {key!r} has no label; labelled stages need labelled shards "
                                "(avf-data import)")
            return -1, targets
        if self.num_classes > 0 and not 0 <= int(label) < self.num_classes:
            raise DataError(f"clip {key!r} has label {label}, outside the label map's {self.num_classes} classes")
        return int(label), targets

    def _views(self, raw: dict[str, Any], unit: int, pass_index: int, sample_index: int,
               first_repeat: int = 0) -> Iterator[dict[str, Any]]:
        try:
            clip = decode_sample(raw)
        except Exception as exc:  # one corrupt sample must not end a week-long run
            if not self.train:
                raise
            print(f"[avf-train] skipping undecodable sample {raw.get('__key__')!r} in {raw.get('__url__')}: {exc}",
                  file=sys.stderr, flush=True)
            return
        label, targets = self._label(clip.meta, clip.key)
        if self.train:
            for r in range(first_repeat, self.repeats):
                rng = np.random.default_rng(_seed(self.seed, 2, pass_index, unit, sample_index, r))
                view = make_view(clip.frames, clip.fps, clip.audio, clip.sample_rate, self.transform, rng)
                yield {**view, "label": label, "targets": targets, "key": clip.key, "view": r}
        else:
            for v in range(self.transform.num_views):
                view = make_view(clip.frames, clip.fps, clip.audio, clip.sample_rate, self.transform, None, v)
                yield {**view, "label": label, "targets": targets, "key": clip.key, "view": v}

    # ---- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"ClipStream built for {self.num_workers} workers, run with {info.num_workers}")
        worker = (physical + self.state.consumed) % self.num_workers
        unit = self.rank * self.num_workers + worker
        if not self.train:
            yield from self._eval_batches(unit, worker)
            return
        pass_index, skip_batches = self.state.workers.get(worker, (0, 0))
        while True:
            produced = yield from self._train_pass(unit, worker, pass_index, skip_batches)
            if produced == 0 and skip_batches == 0:
                raise DataError(f"too few clips for the batch size: loader unit {unit} of {self._units()} (ranks x "
                                f"workers) got no full batch of {self.batch_size} clips in pass {pass_index} over "
                                f"{len(self.shards)} shard(s); lower --batch-size or --num-workers, or add clips")
            pass_index, skip_batches = pass_index + 1, 0

    def _train_pass(self, unit: int, worker: int, pass_index: int, skip_batches: int):
        rng = np.random.default_rng(_seed(self.seed, 3, pass_index, unit))
        first_view = skip_batches * self.views_per_batch
        skip_samples, first_repeat = divmod(first_view, self.repeats)
        items: list[dict[str, Any]] = []
        batch_index, produced = skip_batches, 0
        for i, raw in enumerate(self._shuffled(self._raw_for_unit(unit, pass_index), rng)):
            if i < skip_samples:
                continue
            for item in self._views(raw, unit, pass_index, i, first_repeat if i == skip_samples else 0):
                items.append(item)
                if len(items) == self.views_per_batch:
                    yield collate(items, worker=worker, pass_index=pass_index, batch_index=batch_index)
                    items, batch_index, produced = [], batch_index + 1, produced + 1
        return produced

    def _eval_batches(self, unit: int, worker: int) -> Iterator[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        batch_index = 0
        for i, raw in enumerate(self._raw_for_unit(unit, 0)):
            for item in self._views(raw, unit, 0, i):
                items.append(item)
                if len(items) == self.batch_size:
                    yield collate(items, worker=worker, pass_index=0, batch_index=batch_index)
                    items, batch_index = [], batch_index + 1
        if items:
            yield collate(items, worker=worker, pass_index=0, batch_index=batch_index)


def collate(items: list[dict[str, Any]], worker: int, pass_index: int, batch_index: int) -> dict[str, Any]:
    """Stack views into a batch; ``targets`` (DEA) becomes a float tensor when every clip has it."""
    batch: dict[str, Any] = {
        "video": torch.stack([it["video"] for it in items]),
        "audio": torch.stack([it["audio"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "key": [it["key"] for it in items],
        "view": torch.tensor([it["view"] for it in items], dtype=torch.long),
        "pos": (worker, pass_index, batch_index),
    }
    if all(it["targets"] is not None for it in items):
        batch["targets"] = torch.tensor([list(it["targets"]) for it in items], dtype=torch.float32)
    return batch


def _watch_owner(pid: int, pidfd: int | None) -> None:
    """Exit this worker as soon as process ``pid`` (the loader's owner) has ended."""
    if pidfd is not None:
        import select

        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll(None):  # readable once the process has exited (zombie included)
            pass
        os._exit(0)
    import time

    while True:  # no pidfd (not Linux): poll; a zombie owner still counts as gone
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    os._exit(0)
        except (ProcessLookupError, PermissionError):
            os._exit(0)
        except OSError:
            pass


class _WorkerInit:
    """``worker_init_fn``: one thread per worker, and exit when the owner process dies.

    Workers are children of the forkserver, not of the trainer, so torch's own check of the
    parent pid does not see a killed trainer; they watch the owner's pid themselves (a pidfd
    where the OS has one, so a reused pid cannot fool them).
    """

    def __init__(self, owner: int) -> None:
        self.owner = owner

    def __call__(self, _: int) -> None:
        # one intra-op thread per loader worker: the workers are many, the cores are shared
        torch.set_num_threads(1)
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(self.owner)
            except ProcessLookupError:  # the owner died while this worker was starting
                os._exit(0)
            except OSError:
                pidfd = None
        threading.Thread(target=_watch_owner, args=(self.owner, pidfd), daemon=True,
                         name="avf-watch-owner").start()


def make_loader(stream: ClipStream, num_workers: int, mp_context: str = "forkserver") -> DataLoader:
    """DataLoader over pre-batched items (``batch_size=None``).

    Workers start through ``forkserver``, not ``fork``: forking a parent whose OpenMP pool has
    already run (model init, a previous loader) can deadlock the child inside the first
    interpolate/conv it runs. Each worker exits by itself when this process dies.
    """
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        ctx = torch.multiprocessing.get_context(mp_context)
        if mp_context == "forkserver":  # import the heavy modules once in the server, not per worker
            ctx.set_forkserver_preload(["torch", "numpy", "avf_models.features", "avf_train.data"])
        kwargs.update(prefetch_factor=2, persistent_workers=False, multiprocessing_context=ctx,
                      worker_init_fn=_WorkerInit(os.getpid()))
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      **kwargs)
