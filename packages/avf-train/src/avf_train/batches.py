"""Batches as the loader hands them to the trainer: built in shared memory, reused when released.

A loader worker hands a batch to the trainer through shared memory, and fresh shared memory
costs a page fault per 4 KiB when the worker first writes it (and a mapping when the trainer
first reads it): on this project's VMs ~2.3 ms of CPU per 1.2 MB uint8 clip, a sixth of what a
loader core spends on a clip, and four times that for a float clip. So a worker writes each
batch straight into a buffer it keeps (no stacking, no copy into shared memory on the way out)
and, for ``device_features`` batches, reuses that buffer once the trainer has released it:
``model_inputs``, the trainer's one call per batch, releases the batch as soon as it has made
its own tensors from it. A consumer that never calls it only loses the reuse: a buffer the
trainer may still read is never overwritten, and a worker keeps at most ``POOL`` of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import get_worker_info

from avf_models.features import log_mel_fbank_batch

from .transforms import ClipTransformConfig, normalize_u8_batch

POOL = 4
"""Batch buffers a worker keeps: the DataLoader's prefetch (2), the batch in use and a spare."""


def shared_empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor in shared memory when in a loader worker (handing it over moves a
    file descriptor, not the data), a plain one otherwise."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class Release:
    """A flag in shared memory, set while the consumer may still read a batch's buffers.

    Not a tensor, so the DataLoader's pin-memory thread leaves it (and its shared flag) alone.
    """

    def __init__(self) -> None:
        self.flag = shared_empty((1,), torch.int32)
        self.flag.fill_(0)

    @property
    def busy(self) -> bool:
        return bool(self.flag[0])

    def hold(self) -> None:
        self.flag.fill_(1)

    def __call__(self) -> None:
        self.flag.fill_(0)


@dataclass
class _Buffers:
    video: torch.Tensor
    release: Release
    wave: torch.Tensor | None = None


class BufferPool:
    """A worker's reusable batch buffers (one pool per worker: each has its own stream copy)."""

    def __init__(self, capacity: int = POOL) -> None:
        self.capacity = capacity
        self.buffers: list[_Buffers] = []

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> _Buffers:
        """Free buffers of this shape, or new ones (kept while the pool has room)."""
        for buf in self.buffers:
            if not buf.release.busy and tuple(buf.video.shape) == shape and buf.video.dtype == dtype:
                buf.release.hold()
                return buf
        buf = _Buffers(shared_empty(shape, dtype), Release())
        buf.release.hold()
        if len(self.buffers) < self.capacity:
            self.buffers.append(buf)
        return buf


class BatchBuilder:
    """Collects the views of one batch; each view's video is written into its row directly.

    With a ``pool`` (``device_features`` streams) the buffers are reused after release and the
    batch carries its ``release``; without one every batch gets new buffers.
    """

    def __init__(
        self, size: int, transform: ClipTransformConfig, dtype: torch.dtype, pool: BufferPool | None = None
    ) -> None:
        self.size, self.dtype, self.pool, self.audio_frames = size, dtype, pool, transform.audio_frames
        t, s = transform.num_frames, transform.image_size
        # uint8 rows keep the frames' own layout (a memcpy per view); float rows are the model's
        self.shape = (size, t, s, s, 3) if dtype == torch.uint8 else (size, 3, t, s, s)
        self.items: list[dict[str, Any]] = []
        self.buffers: _Buffers | None = None

    @property
    def full(self) -> bool:
        return len(self.items) == self.size

    def video_row(self) -> torch.Tensor:
        """Where the next view's video goes."""
        if self.buffers is None:
            self.buffers = (
                self.pool.take(self.shape, self.dtype)
                if self.pool is not None
                else _Buffers(shared_empty(self.shape, self.dtype), Release())
            )
        return self.buffers.video[len(self.items)]

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)

    def collate(self, worker: int, pass_index: int, batch_index: int) -> dict[str, Any]:
        assert self.buffers is not None
        items, buffers, n = self.items, self.buffers, len(self.items)
        self.items, self.buffers = [], None
        batch = collate(items, worker=worker, pass_index=pass_index, batch_index=batch_index, video=buffers.video[:n])
        if "wave" in items[0]:
            lengths = [len(it["wave"]) for it in items]
            width = max(lengths)
            if buffers.wave is None or buffers.wave.shape[1] < width:
                buffers.wave = shared_empty((self.size, width))
            wave = buffers.wave[:n, :width]
            for row, it in zip(wave, items, strict=False):
                row[: len(it["wave"])] = torch.from_numpy(it["wave"])
                row[len(it["wave"]) :] = 0.0
            batch.update(
                wave=wave,
                wave_len=torch.tensor(lengths),
                audio_frames=self.audio_frames,
                gain=torch.tensor([it["gain"] for it in items], dtype=torch.float32),
            )
        if "box" in items[0]:  # a list, not a tensor: a small tensor would cost a shared-memory segment
            batch["box"] = [tuple(it["box"]) for it in items]
        if self.pool is not None:
            batch["release"] = buffers.release
        return batch


def collate(
    items: list[dict[str, Any]], worker: int, pass_index: int, batch_index: int, video: torch.Tensor | None = None
) -> dict[str, Any]:
    """Stack views into a batch (``video``: already stacked, e.g. by ``BatchBuilder``);
    ``targets`` (DEA) becomes a float tensor when every clip has it."""
    if video is None:
        video = torch.stack([it["video"] for it in items])
    batch: dict[str, Any] = {
        "video": video,
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "key": [it["key"] for it in items],
        "view": torch.tensor([it["view"] for it in items], dtype=torch.long),
        "pos": (worker, pass_index, batch_index),
    }
    if "audio" in items[0]:
        batch["audio"] = torch.stack([it["audio"] for it in items])
    if all(it["targets"] is not None for it in items):
        batch["targets"] = torch.tensor([list(it["targets"]) for it in items], dtype=torch.float32)
    return batch


def release(batch: dict[str, Any]) -> None:
    """Give a batch's buffers back to the worker that made it; its video and waves go with them
    (they are removed from ``batch``, so nothing can read them once they are rewritten)."""
    for key in ("video", "wave"):
        batch.pop(key, None)
    handle = batch.pop("release", None)
    if handle is not None:
        handle()


def model_inputs(batch: dict[str, Any], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, audio) as the model takes them, on ``device``; then ``release(batch)``.

    A ``device_features`` batch is finished here, after the copy (a quarter of the bytes): its
    uint8 video (B, T, S, S, 3) cropped by its ``box`` rows, resized and normalised into
    (B, 3, T, S, S), its waveforms scaled by their gains and turned into fbanks in one batch (the
    numbers of ``transforms.make_view``). Other batches are only moved.
    """

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=True) if device is not None else t

    video = move(batch["video"])
    if video.dtype == torch.uint8:  # a float tensor of our own, made before the release
        video = normalize_u8_batch(video, batch.get("box"))
    if "wave" in batch:
        wave, lengths, gain = (move(batch[k]) for k in ("wave", "wave_len", "gain"))
        audio = log_mel_fbank_batch(wave * gain[:, None], int(batch["audio_frames"]), lengths).unsqueeze(1)
    else:
        audio = move(batch["audio"])
    if "release" in batch:
        # a CUDA copy from pageable memory has read its source when .to() returns; on the CPU the
        # results above are new tensors: either way the shared buffers are no longer read
        release(batch)
    return video, audio
