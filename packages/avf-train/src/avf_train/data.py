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
  worker roles are rotated by the number of batches already consumed and each worker starts at its
  next batch from the *cursor* the last batch it delivered carried (:mod:`avf_train.sample_order`:
  the shuffle buffer's positions and RNG state), reading only the buffered samples and the rest of
  its pass, so resuming late in a 1.36 M-clip epoch costs what resuming early does. Resuming needs
  the same world size, worker count and batch size; otherwise the trainer restarts the data at the
  pass boundary and says so.
* Loader workers watch the process that owns the loader (the trainer, or one torchrun rank) and
  exit as soon as it is gone, even after ``kill -9``: otherwise they would hold their memory
  forever, waiting for requests that never come.

Speed (``tools/bench/loader.py`` prints clips per CPU-second): a clip's views are planned before
its video is decoded (the window is each view's first random draw), so only the frames the
views use are decoded and converted (``avf_data.shards.VideoReader``); a batch's videos are
written straight into one shared-memory tensor, which the DataLoader hands to the trainer
without copying it again (``avf_train.batches``). With ``device_features`` (pre-training) a
batch carries the video as uint8 (decoded straight into the batch when the shard's frames are
already S x S, as avf-data writes them) with each view's crop box, waveform and gain;
``model_inputs`` crops, resizes and normalises the video and computes the fbanks where the model
runs (batched; on the GPU when training there), and releases the batch's buffers for the worker
to reuse. Why: on real clips the crop and resize were ~1 ms of a worker's ~11 ms, the fbank
~1.5 ms, and fresh shared memory costs a page fault per 4 KiB, ~9 ms of CPU per float clip
(4.9 MB) on a VM. Shards can be local or remote (``avf_data.shard_urls``); their sizes
come from the index next to each shard, not from reading them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avf_data.shard_urls import split_list
from avf_data.shards import SAMPLE_RATE, VideoReader, decode_audio, expand_shards, sample_meta, shard_counts

from .batches import BatchBuilder, BufferPool, collate, model_inputs, release
from .errors import DataError
from .labels import RunLabels
from .sample_order import SeekableShuffle, UnitSamples, skip_state
from .shardinfo import clip_label
from .transforms import ClipTransformConfig, audio_span, finish_view, view_frames, view_start

__all__ = [
    "ClipStream",
    "StreamState",
    "collate",
    "count_samples",
    "make_loader",
    "model_inputs",
    "release",
    "resolve_shards",
]


def resolve_shards(spec: str) -> list[str]:
    """Comma-separated shard patterns -> sorted shard names (FileNotFoundError naming the pattern).

    Each pattern is what WebDataset takes: a glob, a folder, a brace pattern, an http(s) or
    fsspec URL, or a ``pipe:`` command; commas inside ``{...}`` belong to the pattern.
    """
    if not spec:
        raise FileNotFoundError("no shards given (set --shards / --data or data.shards)")
    return sorted({p for part in split_list(spec) for p in expand_shards(part)})


def count_samples(paths: list[str]) -> int:
    """Number of samples in the shards: from their indices (or the build's manifest), reading a
    shard only when it has neither."""
    return sum(shard_counts(paths))


@dataclass
class StreamState:
    """Where each logical worker resumes: next (pass, batch-in-pass) and the cursor there (the
    shuffle's state, :mod:`avf_train.sample_order`), plus batches consumed."""

    consumed: int = 0  # batches delivered to the trainer (this rank)
    workers: dict[int, tuple[int, int]] = field(default_factory=dict)  # logical worker -> (pass, next batch)
    num_workers: int = 1
    world_size: int = 1
    batch_size: int = 0
    cursors: dict[int, dict[str, Any]] = field(default_factory=dict)  # logical worker -> cursor of its next batch

    def to_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "num_workers": self.num_workers,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "workers": {str(k): [int(p), int(b)] for k, (p, b) in self.workers.items()},
            "cursors": {str(k): c for k, c in self.cursors.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamState:
        return cls(
            consumed=int(d["consumed"]),
            num_workers=int(d["num_workers"]),
            world_size=int(d["world_size"]),
            batch_size=int(d["batch_size"]),
            workers={int(k): (int(v[0]), int(v[1])) for k, v in d["workers"].items()},
            cursors={int(k): c for k, c in (d.get("cursors") or {}).items()},  # runs before cursors: none
        )

    def advance(self, worker: int, pass_index: int, batch_index: int, cursor: dict[str, Any] | None = None) -> None:
        self.consumed += 1
        self.workers[worker] = (pass_index, batch_index + 1)
        if cursor is not None:
            self.cursors[worker] = cursor
        else:
            self.cursors.pop(worker, None)


def _seed(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])


class ClipStream(IterableDataset):
    """Batches of model inputs from shards; see the module docstring for the splitting scheme.

    ``train=True``: infinite, shuffled, augmented, drop-last per pass. ``train=False``: one ordered
    pass, every clip expanded into ``transform.num_views`` deterministic test views (a batch holds
    ``batch_size`` whole clips), last batch kept.
    """

    def __init__(
        self,
        shards: list[str],
        transform: ClipTransformConfig,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_buffer: int = 256,
        repeats: int = 1,
        labels: RunLabels | None = None,
        labelled: bool = False,
        state: StreamState | None = None,
        num_classes: int = 0,
        device_features: bool = False,
    ) -> None:
        """``batch_size``: clips per batch, each as ``repeats`` augmented views when training and
        as ``transform.num_views`` test views otherwise (one meaning of the flag everywhere).
        ``labels``: the run's label map (clips are placed through it); without one,
        ``num_classes`` > 0 bounds the clips' integer labels. ``device_features`` (pre-training
        only): batches carry uint8 video and waveforms, which ``model_inputs`` turns into the
        model's inputs where it runs."""
        super().__init__()
        self.shards, self.transform, self.batch_size = list(shards), transform, batch_size
        self.train, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.num_workers = max(1, num_workers)
        self.shuffle_buffer, self.repeats = shuffle_buffer, max(1, repeats)
        self.labels, self.labelled, self.num_classes = labels, labelled, num_classes
        self.state = state or StreamState()
        if device_features and transform.mode != "pretrain":
            raise ValueError(f"device_features is for pre-training views, not {transform.mode!r}")
        self.device_features = device_features

    @property
    def _video_dtype(self) -> torch.dtype:
        return torch.uint8 if self.device_features else torch.float32

    def __getstate__(self) -> dict[str, Any]:  # each worker builds its own buffers
        return {k: v for k, v in self.__dict__.items() if k not in ("_buffer_pool", "_frames", "_counts")}

    def _frame_buffer(self, count: int, video: VideoReader) -> np.ndarray | None:
        """A reused array for a clip's decoded frames (views are made from it before the next
        clip is decoded); None until the frame size is known from the first clip."""
        shape = getattr(self, "_frames_shape", None)
        buf = getattr(self, "_frames", None)
        if shape is None or video.frame_shape != shape:
            self._frames_shape, self._frames = video.frame_shape, None
            return None
        if buf is None or len(buf) < count:
            self._frames = buf = np.empty((count, *shape), np.uint8)
        return buf

    def _frame_target(
        self, plans: list[tuple[Any, ...]], used: np.ndarray, video: VideoReader, batch: BatchBuilder
    ) -> np.ndarray | None:
        """Where a clip's decoded frames go: straight into the batch's next row when that row
        is exactly the one view's video (uint8 pre-training views of S x S shards, whose crop
        is left to the device), else the reused frame buffer."""
        s = self.transform.image_size
        if (
            self.device_features
            and len(plans) == 1
            and len(used) == self.transform.num_frames
            and video.frame_shape == (s, s, 3)
        ):
            return batch.video_row().numpy()
        return self._frame_buffer(len(used), video)

    def _pool(self) -> BufferPool | None:
        """This worker's reusable batch buffers (``device_features`` batches, which the trainer
        releases through ``model_inputs``); built lazily, so each worker has its own."""
        if not self.device_features:
            return None
        if getattr(self, "_buffer_pool", None) is None:
            self._buffer_pool = BufferPool()
        return self._buffer_pool

    def _new_batch(self) -> BatchBuilder:
        """An empty batch (a stream of other items, e.g. the sync expert's windows, brings its own)."""
        return BatchBuilder(self.views_per_batch, self.transform, self._video_dtype, self._pool())

    @property
    def views_per_batch(self) -> int:
        return self.batch_size * (self.repeats if self.train else self.transform.num_views)

    # ---- splitting -------------------------------------------------------------------------

    def _units(self) -> int:
        return self.world_size * self.num_workers

    def _unit_samples(self, unit: int, pass_index: int) -> UnitSamples:
        order = list(self.shards)
        if self.train:
            np.random.default_rng(_seed(self.seed, 1, pass_index)).shuffle(order)
        return UnitSamples(order, unit, self._units(), self._shard_counts)

    def _shard_counts(self, shards: list[str]) -> list[int]:
        """Samples per shard, from the indexes (read once per worker, when a pass starts past 0)."""
        cache = self.__dict__.setdefault("_counts", {})
        missing = [s for s in shards if s not in cache]
        if missing:
            cache.update(zip(missing, shard_counts(missing), strict=True))
        return [cache[s] for s in shards]

    # ---- per-sample ----------------------------------------------------------------------

    def _label(self, meta: dict[str, Any], key: str) -> tuple[int, list[float] | None]:
        targets = meta.get("targets")
        if self.train and not self.labelled and self.labels is None:
            try:  # pre-training: labels ride along unused, so a malformed one must not stop the run
                label = clip_label(meta.get("label"), f"clip {key!r}")
            except DataError:
                label = None
            return (-1 if label is None else label), targets
        if self.labels is not None:
            label = self.labels.index(meta, key)
        else:
            label = clip_label(meta.get("label"), f"clip {key!r}")
            if label is not None and self.num_classes > 0 and not 0 <= label < self.num_classes:
                raise DataError(f"clip {key!r} has label {label}, outside the label map's {self.num_classes} classes")
        if label is None:
            if self.labelled and targets is None:
                raise DataError(f"clip {key!r} has no label; labelled stages need labelled shards (avf-data import)")
            return -1, targets
        return label, targets

    def _views(
        self, raw: dict[str, Any], unit: int, pass_index: int, sample_index: int, first_repeat: int, batch: BatchBuilder
    ) -> Iterator[dict[str, Any]]:
        """The views of one raw sample, each video written into ``batch``'s next free row.

        Every view's window is drawn first (its generator's first draw), so only the frames and
        the audio the views use are decoded; the generators then go on as in ``make_view``.
        """
        key = raw.get("__key__", "?")
        cfg = self.transform
        span = cfg.num_frames * cfg.sampling_rate
        try:
            meta, audio_ext = sample_meta(raw)
            with VideoReader(raw["mp4"]) as video:
                n, fps = video.num_frames, video.fps
                plans: list[tuple[int, np.random.Generator | None, np.ndarray]] = []
                if self.train:
                    for r in range(first_repeat, self.repeats):
                        rng = np.random.default_rng(_seed(self.seed, 2, pass_index, unit, sample_index, r))
                        plans.append((r, rng, view_frames(n, cfg, view_start(n, cfg, rng))))
                else:
                    for v in range(cfg.num_views):
                        plans.append((v, None, view_frames(n, cfg, view_start(n, cfg, None, v))))
                used = np.unique(np.concatenate([idx for _, _, idx in plans]))
                frames = video.frames(used, out=self._frame_target(plans, used, video, batch))
            spans = [audio_span(SAMPLE_RATE, fps, int(idx[0]), span) for _, _, idx in plans]
            offset = min(a for a, _ in spans)
            audio, sample_rate = decode_audio(raw[audio_ext], offset, max(b for _, b in spans))
            if sample_rate != SAMPLE_RATE:  # not an avf shard's audio: finish_view says so
                (audio, sample_rate), offset = decode_audio(raw[audio_ext]), 0
        except Exception as exc:  # one corrupt sample must not end a week-long run
            if not self.train:
                raise
            print(
                f"[avf-train] skipping undecodable sample {key!r} in {raw.get('__url__')}: {exc}",
                file=sys.stderr,
                flush=True,
            )
            return
        label, targets = self._label(meta, key)
        for r, rng, idx in plans:
            own = frames if np.array_equal(idx, used) else frames[np.searchsorted(used, idx)]
            view = finish_view(
                own,
                int(idx[0]),
                fps,
                audio,
                sample_rate,
                cfg,
                rng,
                r,
                out=batch.video_row(),
                audio_offset=offset,
                fbank=not self.device_features,
            )
            yield {**view, "label": label, "targets": targets, "key": key, "view": r}

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
        cursor = self.state.cursors.get(worker)
        while True:
            produced = yield from self._train_pass(unit, worker, pass_index, skip_batches, cursor)
            if produced == 0 and skip_batches == 0:
                raise DataError(
                    f"too few clips for the batch size: loader unit {unit} of {self._units()} (ranks x "
                    f"workers) got no full batch of {self.batch_size} clips in pass {pass_index} over "
                    f"{len(self.shards)} shard(s); lower --batch-size or --num-workers, or add clips"
                )
            pass_index, skip_batches, cursor = pass_index + 1, 0, None

    def _train_pass(
        self, unit: int, worker: int, pass_index: int, skip_batches: int, cursor: dict[str, Any] | None = None
    ):
        """One pass of a unit, from batch ``skip_batches`` on: restored from ``cursor`` when the
        last delivered batch carried one, else found by running the shuffle on positions."""
        samples = self._unit_samples(unit, pass_index)
        size = self.shuffle_buffer
        fresh = np.random.default_rng(_seed(self.seed, 3, pass_index, unit))
        first_sample = first_repeat = 0
        state = None
        if cursor is not None and cursor.get("pass") == pass_index:
            state, first_sample, first_repeat = cursor["shuffle"], int(cursor["sample"]), int(cursor["repeat"])
        elif skip_batches:
            first_sample, first_repeat = divmod(skip_batches * self.views_per_batch, self.repeats)
            state = skip_state(size, fresh, samples.total(), first_sample)
        if state is None:
            shuffle = SeekableShuffle(size, fresh)
        else:
            shuffle = SeekableShuffle.restore(size, state, samples.read(state["buffer"]))
        batch = self._new_batch()
        batch_index, produced = skip_batches, 0
        before = shuffle.state()  # the shuffle before it gives out sample i (a cursor to start at i)
        for i, (_, raw) in enumerate(shuffle(samples.iter_from(shuffle.read)), start=first_sample):
            after = shuffle.state()
            for item in self._views(raw, unit, pass_index, i, first_repeat if i == first_sample else 0, batch):
                batch.add(item)
                if batch.full:
                    r = item["view"] + 1  # the next view of this sample, or the next sample
                    at = (
                        {"sample": i, "repeat": r, "shuffle": before}
                        if r < self.repeats
                        else {
                            "sample": i + 1,
                            "repeat": 0,
                            "shuffle": after,
                        }
                    )
                    out = batch.collate(worker=worker, pass_index=pass_index, batch_index=batch_index)
                    out["cursor"] = {"pass": pass_index, **at}
                    yield out
                    batch_index, produced = batch_index + 1, produced + 1
            before = after
        return produced

    def _eval_batches(self, unit: int, worker: int) -> Iterator[dict[str, Any]]:
        batch = self._new_batch()
        batch_index = 0
        for i, raw in enumerate(self._unit_samples(unit, 0).iter_from(0)):
            for item in self._views(raw, unit, 0, i, 0, batch):
                batch.add(item)
                if batch.full:
                    yield batch.collate(worker=worker, pass_index=0, batch_index=batch_index)
                    batch_index += 1
        if batch.items:
            yield batch.collate(worker=worker, pass_index=0, batch_index=batch_index)


class _WorkerInit:
    """``worker_init_fn``: one thread per worker, and exit when the owner process dies.

    Workers are children of the forkserver, not of the trainer, so torch's own check of the
    parent pid does not see a killed trainer (and the forkserver lives as long as any worker);
    ``avf_data.lifetime.exit_with`` ends them when the owner ends: a pidfd watch on the owner,
    plus the kernel's parent-death signal where the forking thread is known to live as long as
    its process.
    """

    def __init__(self, owner: int) -> None:
        self.owner = owner

    def __call__(self, _: int) -> None:
        from avf_data.lifetime import exit_with

        exit_with(self.owner)
        # one intra-op thread per loader worker: the workers are many, the cores are shared
        torch.set_num_threads(1)


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
            ctx.set_forkserver_preload(
                ["torch", "numpy", "avf_models.features", "avf_train.data", "avf_data.fork_server"]
            )
        kwargs.update(
            prefetch_factor=2,
            persistent_workers=False,
            multiprocessing_context=ctx,
            worker_init_fn=_WorkerInit(os.getpid()),
        )
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(), **kwargs)
