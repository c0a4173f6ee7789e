"""The sync expert's training data: runs of SyncNet windows with the audio around them.

One clip visit gives one *run*: ``W`` consecutive 5-frame video windows (frames ``i .. i+W+3``)
and the MFCC blocks of the audio windows ``i-K .. i+W-1+K``, so each video window meets its own
audio (shift 0) and the audio shifted by up to ``K`` frames either way, all from one set of
``W + 2K`` audio embeddings. A run, not single windows: the audio branch runs once per audio
window, not once per (window, shift) pair (on a CPU one window's ``2K + 1`` shifts would cost
twice its video).

The inputs are made exactly as avf-data's scoring path makes them, so a trained expert scores
through it unchanged (:mod:`avf_data.sync_pass`, :class:`avf_data.stages.sync.SyncNetScorer`):

* ``input: source``: the reference crop (face box plus chin, median-filtered over the whole
  clip's boxes, :func:`~avf_data.stages.syncnet_input.reference_rects`) cut from the source
  video at source resolution, as ``avf-data sync`` and ``build --syncnet-weights`` do when the
  source is readable. It needs what they need, for every clip: ``face_boxes`` in the json, 25
  fps, the source file at its recorded path; :func:`source_problems` lists what is missing.
* ``input: crop``: the shard's 160 px training crop mapped to SyncNet's window
  (:func:`~avf_data.stages.syncnet.lip_input_from_face_crop`), what the scoring path uses
  without a source; the expert's sidecar then tells avf-data to score crops.
* audio: the shard's 16 kHz wav on the int16 scale, MFCC over the whole clip
  (:func:`~avf_data.stages.syncnet.mfcc_psf`); window ``j`` is columns ``4j .. 4j+19``.

Both need OpenCV and scipy (the crop geometry is pixel-exact only with OpenCV's resampling), which
avf-data's curation extra brings: ``pip install 'avf-data[curate]'``.

The stream is :class:`~avf_train.data.ClipStream` with runs for views: the same shard split,
shuffle and cursors, so a resumed run reads the runs an uninterrupted one would (a run's
position and mirror are drawn from a generator seeded by (seed, pass, unit, sample)).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from avf_data.shards import SAMPLE_RATE, VideoReader, decode_audio, iter_raw_samples, sample_meta

from .data import ClipStream, _seed
from .errors import DataError

FRAMES = 5  # frames per SyncNet window
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
MFCC_COLUMNS = 20  # one audio window: 0.2 s
CURATE_HINT = "avf-train syncnet builds SyncNet's inputs with avf-data's curation stack: pip install 'avf-data[curate]'"


@dataclass(frozen=True)
class RunSpec:
    """What one clip visit yields (``syncnet.*`` of the run's config)."""

    windows: int
    max_shift: int
    input: str = "source"
    face_crop_scale: float = 1.8
    flip: bool = True

    @property
    def frames(self) -> int:
        return self.windows + FRAMES - 1

    @property
    def audio_windows(self) -> int:
        return self.windows + 2 * self.max_shift


def usable_windows(n_frames: int, n_samples: int, n_mfcc: int) -> int:
    """SyncNet windows of a clip, counted as the scoring path counts them (SyncNetScorer: the
    shorter of video and audio, less 5, bounded by the MFCC columns)."""
    n = min(n_frames, n_samples // (SAMPLE_RATE // 25)) - FRAMES
    return max(0, min(n, (n_mfcc - MFCC_COLUMNS) // MFCC_PER_FRAME + 1))


def clip_mfcc(audio: np.ndarray) -> np.ndarray:
    """``(13, M)`` MFCC of a clip's 16 kHz float audio, on the int16 scale the scoring path uses."""
    from avf_data.stages.syncnet import mfcc_psf
    from avf_data.stages.syncnet_input import to_int16

    return mfcc_psf(to_int16(audio), SAMPLE_RATE)


def audio_blocks(mfcc: np.ndarray, first: int, count: int, n_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """MFCC blocks of audio windows ``first .. first+count-1`` as ``(count, 13, 20)`` and which of
    them exist (zeros outside the clip)."""
    blocks = np.zeros((count, mfcc.shape[0], MFCC_COLUMNS), np.float32)
    valid = np.zeros(count, bool)
    for q in range(count):
        j = first + q
        if 0 <= j < n_windows:
            blocks[q] = mfcc[:, MFCC_PER_FRAME * j : MFCC_PER_FRAME * j + MFCC_COLUMNS]
            valid[q] = True
    return blocks, valid


def source_frames(meta: dict[str, Any], first: int, count: int) -> np.ndarray:
    """Reference crops of frames ``first .. first+count-1`` cut from the clip's source video:
    ``(count, 224, 224, 3)`` uint8 RGB, the geometry of the whole clip's smoothed boxes."""
    from avf_data.stages.syncnet_input import reference_rects
    from avf_data.sync_pass import decode_source_crops

    rects = reference_rects(np.asarray(meta["face_boxes"], np.float64))
    start = float(meta["start"]) + first / 25.0
    return decode_source_crops(meta["source"], start, count, rects[first : first + count])


def crop_frames(raw: dict[str, Any], first: int, count: int, face_crop_scale: float) -> np.ndarray:
    """The training crop's frames ``first .. first+count-1`` in SyncNet's window geometry:
    ``(count, 224, 224, 3)`` uint8 RGB (what avf-data scores without a source)."""
    from avf_data.stages.syncnet import lip_input_from_face_crop

    with VideoReader(raw["mp4"]) as video:
        frames = video.frames(np.arange(first, first + count))
    bgr = lip_input_from_face_crop(frames, face_crop_scale)  # (T, 3, 224, 224) float BGR, integer values
    return np.ascontiguousarray(bgr[:, ::-1].transpose(0, 2, 3, 1)).astype(np.uint8)


def read_run(raw: dict[str, Any], spec: RunSpec, rng: np.random.Generator) -> dict[str, Any] | None:
    """One run of a raw shard sample (None: the clip is shorter than a run)."""
    meta, audio_ext = sample_meta(raw)
    audio, sr = decode_audio(raw[audio_ext])
    if sr != SAMPLE_RATE:
        raise DataError(f"clip {raw.get('__key__')!r} has {sr} Hz audio; avf shards carry {SAMPLE_RATE} Hz")
    mfcc = clip_mfcc(audio)
    n_frames = _video_frames(raw, meta, spec)
    n = usable_windows(n_frames, audio.size, mfcc.shape[1])
    if n < spec.windows:
        return None
    first = int(rng.integers(0, n - spec.windows + 1))
    mirror = bool(spec.flip and rng.random() < 0.5)
    if spec.input == "source":
        frames = source_frames(meta, first, spec.frames)
    else:
        frames = crop_frames(raw, first, spec.frames, spec.face_crop_scale)
    if mirror:
        frames = np.ascontiguousarray(frames[:, :, ::-1])
    blocks, valid = audio_blocks(mfcc, first - spec.max_shift, spec.audio_windows, n)
    return {"frames": frames, "mfcc": blocks, "valid": valid, "first": first}


def _video_frames(raw: dict[str, Any], meta: dict[str, Any], spec: RunSpec) -> int:
    """Frames the run can come from: the source clip's (face boxes) or the shard video's."""
    if spec.input == "source":
        from avf_data.sync_pass import clip_num_frames, source_unusable

        why = source_unusable(meta)
        if why is not None:
            raise DataError(f"clip {raw.get('__key__')!r}: {why}; {SOURCE_HINT}")
        return clip_num_frames(meta)
    with VideoReader(raw["mp4"]) as video:
        if abs(video.fps - 25.0) > 1e-3:
            raise DataError(f"clip {raw.get('__key__')!r} is {video.fps:g} fps; SyncNet's windows need 25")
        return video.num_frames


SOURCE_HINT = (
    "syncnet.input=source trains on the reference crop cut from each clip's source video (what "
    "avf-data sync scores when the source is there), so the sources must be readable at the paths "
    "the build recorded; or train on the shards' 160 px crops with --set syncnet.input=crop"
)


def source_problems(shards: list[str], limit: int = 3) -> tuple[int, int, list[str]]:
    """(clips, clips whose source crop cannot be cut, the first ``limit`` reasons) over the
    json of every clip of ``shards`` (a few hundred bytes each, no media read)."""
    from avf_data.sync_pass import source_unusable

    total, bad, first = 0, 0, []
    for sample in iter_raw_samples(shards, exts=("json",)):
        total += 1
        why = source_unusable(json.loads(sample["json"]))
        if why is not None:
            bad += 1
            if len(first) < limit:
                first.append(f"{sample['__key__']} in {sample.get('__url__')}: {why}")
    return total, bad, first


class RunBatch:
    """A batch of runs (the stream's ``_new_batch``): stacked once it is full."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[dict[str, Any]] = []

    @property
    def full(self) -> bool:
        return len(self.items) == self.size

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)

    def collate(self, worker: int, pass_index: int, batch_index: int) -> dict[str, Any]:
        items, self.items = self.items, []
        return {
            "video": torch.from_numpy(np.stack([it["frames"] for it in items])),  # (B, T, 224, 224, 3) uint8 RGB
            "mfcc": torch.from_numpy(np.stack([it["mfcc"] for it in items])),  # (B, W + 2K, 13, 20)
            "valid": torch.from_numpy(np.stack([it["valid"] for it in items])),  # (B, W + 2K)
            "first": torch.tensor([it["first"] for it in items]),
            "key": [it["key"] for it in items],
            "view": torch.zeros(len(items), dtype=torch.long),
            "pos": (worker, pass_index, batch_index),
        }


class RunStream(ClipStream):
    """:class:`ClipStream` whose views are runs (one per clip visit; see the module docstring)."""

    def __init__(self, shards: list[str], spec: RunSpec, batch_size: int, transform: Any, **kwargs: Any) -> None:
        super().__init__(shards, transform, batch_size, train=True, repeats=1, **kwargs)
        self.spec = spec

    def _new_batch(self) -> RunBatch:  # type: ignore[override]
        return RunBatch(self.batch_size)

    def _views(
        self, raw: dict[str, Any], unit: int, pass_index: int, sample_index: int, first_repeat: int, batch: Any
    ) -> Iterator[dict[str, Any]]:
        """The run of one clip visit; a clip too short for a run gives none, an undecodable one
        is skipped with a line (as pre-training does), a missing source stops the run."""
        key = raw.get("__key__", "?")
        rng = np.random.default_rng(_seed(self.seed, 2, pass_index, unit, sample_index, 0))
        try:
            run = read_run(raw, self.spec, rng)
        except DataError:
            raise
        except ImportError as exc:
            raise DataError(f"{CURATE_HINT} ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - one corrupt sample must not end a long run
            print(f"[avf-train] skipping undecodable sample {key!r} in {raw.get('__url__')}: {exc}", file=sys.stderr)
            return
        if run is not None:
            yield {**run, "key": key, "view": 0}
