"""The on-disk sample format shared by every avf package, and its reader and writer.

A curated corpus is a folder of WebDataset tar shards. Each clip is one sample made of
files that share a key (``<key>.mp4``, ``<key>.wav``, ``<key>.json`` and, for labelled
shards, ``<key>.cls``). Keeping the format in one module means avf-train and avf-eval read
exactly what avf-data writes; they import these helpers instead of re-implementing them.

Sample contents
---------------
``mp4``  face-crop video, H.264 (yuv420p), constant frame rate (25 fps by default), square.
``wav``  16 kHz mono PCM-16 speech aligned with the video (same start and end time).
``json`` metadata: ``source``, ``start``, ``end`` (seconds in the source), ``fps``,
         ``sample_rate``, ``boxes`` (smoothed crop boxes), detector scores, sync offset and
         confidence, blur score, ``pipeline_version``; labelled shards add ``label``
         (class index), ``label_name``, ``subject``, ``fold`` and optionally ``targets``
         (a list of floats for dimensional emotion).
``cls``  class index as decimal text (labelled shards only), the WebDataset convention.

Shards are written to a temporary name and renamed when complete, so a reader never sees
half a shard, and a crashed run leaves at most ``*.tar.tmp`` files that a rerun deletes.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
"""Audio sample rate of every shard sample (Hz)."""

DEFAULT_FPS = 25
"""Frame rate of every shard video unless configured otherwise."""


@dataclass
class ClipSample:
    """One curated clip, ready to be written as a WebDataset sample."""

    key: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    audio: np.ndarray  # (N,) float32 in [-1, 1] at ``sample_rate``
    meta: dict[str, Any] = field(default_factory=dict)
    fps: float = DEFAULT_FPS
    sample_rate: int = SAMPLE_RATE
    label: int | None = None

    def to_wds(self) -> dict[str, bytes]:
        """Encode into the ``{extension: bytes}`` mapping a WebDataset tar stores."""
        if "." in self.key:
            raise ValueError(f"sample key {self.key!r} must not contain '.' (WebDataset splits on it)")
        meta = dict(self.meta)
        meta.setdefault("fps", self.fps)
        meta.setdefault("sample_rate", self.sample_rate)
        meta.setdefault("num_frames", int(len(self.frames)))
        out = {
            "__key__": self.key,
            "mp4": encode_mp4(self.frames, self.fps),
            "wav": encode_wav(self.audio, self.sample_rate),
        }
        if self.label is not None:
            meta["label"] = int(self.label)
            out["cls"] = str(int(self.label)).encode()
        out["json"] = json.dumps(meta, sort_keys=True).encode()
        return out


# --------------------------------------------------------------------------- encoding


def encode_mp4(frames: np.ndarray, fps: float = DEFAULT_FPS, crf: int = 18) -> bytes:
    """H.264-encode RGB frames (T, H, W, 3) uint8 into an in-memory mp4.

    Even width/height are required by yuv420p; callers crop to even sizes (160 by default).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("cannot encode an empty clip")
    import av

    height, width = frames.shape[1:3]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        stream.codec_context.thread_count = 1  # clips are tiny; x264's thread pool costs more than it saves
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def encode_wav(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode mono float audio in [-1, 1] as 16-bit PCM WAV bytes."""
    import soundfile as sf

    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# --------------------------------------------------------------------------- decoding


def decode_mp4(data: bytes) -> tuple[np.ndarray, float]:
    """Decode mp4 bytes into RGB frames (T, H, W, 3) uint8 and the stream's frame rate."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate or DEFAULT_FPS)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError("mp4 sample holds no decodable frames")
    return np.stack(frames), fps


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode wav/flac bytes into mono float32 samples and their sample rate."""
    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(sr)


@dataclass
class DecodedClip:
    """A shard sample after decoding: what trainers and evaluators consume."""

    key: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float
    audio: np.ndarray  # (N,) float32
    sample_rate: int
    meta: dict[str, Any]

    @property
    def label(self) -> int | None:
        value = self.meta.get("label")
        return None if value is None else int(value)


def decode_sample(sample: dict[str, Any]) -> DecodedClip:
    """Decode one raw WebDataset sample (``{ext: bytes}``) into a :class:`DecodedClip`."""
    key = sample.get("__key__", "?")
    missing = [ext for ext in ("mp4", "json") if ext not in sample]
    audio_ext = next((ext for ext in ("wav", "flac") if ext in sample), None)
    if missing or audio_ext is None:
        need = missing + ([] if audio_ext else ["wav|flac"])
        raise ValueError(f"sample {key!r} lacks {', '.join(need)}; is this an avf shard?")
    meta = json.loads(sample["json"])
    if "cls" in sample and "label" not in meta:
        meta["label"] = int(sample["cls"])
    frames, fps = decode_mp4(sample["mp4"])
    audio, sr = decode_audio(sample[audio_ext])
    return DecodedClip(key=key, frames=frames, fps=fps, audio=audio, sample_rate=sr, meta=meta)


# --------------------------------------------------------------------------- shard files


def expand_shards(pattern: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Resolve a glob, a folder, a brace-free list or a single path into sorted shard paths.

    Raises FileNotFoundError naming the pattern when nothing matches, because an empty
    training set is always a mistake worth stopping for.
    """
    if isinstance(pattern, (str, os.PathLike)):
        text = os.fspath(pattern)
        if os.path.isdir(text):
            paths = sorted(glob.glob(os.path.join(text, "**", "*.tar"), recursive=True))
        else:
            paths = sorted(glob.glob(text))
    else:
        paths = sorted(p for item in pattern for p in expand_shards(item))
    paths = [p for p in paths if p.endswith(".tar")]
    if not paths:
        raise FileNotFoundError(f"no shards (*.tar) found for {os.fspath(pattern) if isinstance(pattern, (str, os.PathLike)) else list(pattern)!r}")
    return paths


def iter_raw_samples(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Yield raw ``{ext: bytes, '__key__': key}`` samples from shard files in order.

    A plain tarfile reader: no worker splitting or shuffling, which the trainers add on top.
    """
    for path in paths:
        current: dict[str, Any] | None = None
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = os.path.basename(member.name)
                key, _, ext = name.partition(".")
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": path}
                current[ext] = tar.extractfile(member).read()
        if current is not None:
            yield current


def iter_clips(pattern: str | os.PathLike | Iterable[str]) -> Iterator[DecodedClip]:
    """Decode every sample of the shards matching ``pattern``."""
    for sample in iter_raw_samples(expand_shards(pattern)):
        yield decode_sample(sample)


class ShardWriter:
    """Writes samples into numbered shards ``<prefix>-NNNNNN.tar``, each one atomically.

    Samples are buffered in a ``.tar.tmp`` file that is renamed once the shard is full or
    the writer is closed; ``first_index`` lets a resumed run continue the numbering.

    With ``defer_rename=True`` full shards stay ``.tar.tmp`` (closed and fsynced) until
    :meth:`commit` (or ``close``) renames all of them together, so a group of shards appears
    at once; :meth:`abort` deletes them instead.
    """

    def __init__(self, folder: str | os.PathLike, prefix: str = "shard", max_count: int = 1000,
                 max_bytes: int = 1 << 30, first_index: int = 0, defer_rename: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.max_bytes = prefix, max_count, max_bytes
        self.index = first_index
        self.defer_rename = defer_rename
        self.written: list[Path] = []
        self._deferred: list[Path] = []  # final paths whose .tmp is complete but not renamed yet
        self._tar: tarfile.TarFile | None = None
        self._count = self._bytes = 0

    def _path(self) -> Path:
        return self.folder / f"{self.prefix}-{self.index:06d}.tar"

    def write(self, sample: ClipSample | dict[str, Any]) -> Path:
        """Add one sample; returns the final path of the shard that will hold it."""
        record = sample.to_wds() if isinstance(sample, ClipSample) else sample
        if self._tar is None:
            self._tar = tarfile.open(str(self._path()) + ".tmp", "w")
        key = record["__key__"]
        for ext in sorted(k for k in record if not k.startswith("__")):
            data = record[ext]
            if isinstance(data, str):
                data = data.encode()
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data)
        self._count += 1
        target = self._path()
        if self._count >= self.max_count or self._bytes >= self.max_bytes:
            self.flush()
        return target

    def flush(self) -> None:
        """Close the current shard (if any) and move it to its final name."""
        if self._tar is None:
            return
        self._tar.close()
        final = self._path()
        tmp = Path(str(final) + ".tmp")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if self.defer_rename:
            self._deferred.append(final)
        else:
            os.replace(tmp, final)
            self.written.append(final)
        self._tar, self._count, self._bytes = None, 0, 0
        self.index += 1

    def commit(self) -> None:
        """Close the current shard and rename every deferred shard to its final name."""
        self.flush()
        for final in self._deferred:
            os.replace(Path(str(final) + ".tmp"), final)
            self.written.append(final)
        if self._deferred:
            _fsync_dir(self.folder)
        self._deferred = []

    def abort(self) -> None:
        """Drop everything not renamed yet (the open shard and deferred ones)."""
        if self._tar is not None:
            try:
                self._tar.close()
            except Exception:  # pragma: no cover - already failing
                pass
            self._deferred.append(self._path())
            self._tar = None
        for final in self._deferred:
            Path(str(final) + ".tmp").unlink(missing_ok=True)
        self._deferred = []

    def close(self) -> None:
        self.commit()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is not None and self.defer_rename:
            self.abort()
        else:
            self.close()


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
