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
Next to every shard ``<name>.tar`` the writer puts ``<name>.idx.json`` (its sample count and
size), so a reader learns how many clips a set of shards holds without reading them.

Shards are read from local paths, globs, brace patterns, http(s) URLs, ``pipe:`` commands or
fsspec URLs (``avf_data.shard_urls``). Decoding is fork-safe: PyAV runs single-threaded here
(a frame converted by PyAV's default, multi-threaded scaler in a parent deadlocks the next
conversion in a forked child), see ``VideoReader``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from . import shard_urls, tars

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


X264_OPTIONS = {
    "preset": "veryfast",
    "tune": "fastdecode",
    "x264-params": "bframes=3:b-adapt=0:b-pyramid=none:mbtree=0",
}
"""x264 settings of shard videos, chosen for the training loader, which decodes 16 frames at
stride 4 of every clip it reads. ``b-adapt=0`` with 3 non-reference B-frames puts a P-frame at
every 4th frame, so a reader decodes the P chain plus the B-frames it wants and skips the rest
(``VideoReader``); ``tune=fastdecode`` (CAVLC, no deblocking) halves the cost of each decoded
frame. Measured on real 160 px face crops (~6 s clips), CPU per 16x4 view: 18.7 ms decoding
every frame, 11.8 ms with ``VideoReader`` on the previous settings, 5.6 ms with these; files
6% larger, mean absolute pixel error at crf 18 1.8 -> 2.0 levels. ``mbtree=0``: with x264's
macroblock-tree rate control on, the same frames encoded twice in one process came out
different in 2 of 6 real clips (first frame's quantiser already; an uninitialised read in
x264 core 165), so two builds of the same inputs differed. Without it the output depends on
the frames only; it costs 9.7% in file size and 1.68 -> 1.71 levels of error on real crops.
Shards written with other settings (older builds) read the same way."""


def encode_mp4(frames: np.ndarray, fps: float = DEFAULT_FPS, crf: int = 18) -> bytes:
    """H.264-encode RGB frames (T, H, W, 3) uint8 into an in-memory mp4 (see ``X264_OPTIONS``).

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
        stream.options = {"crf": str(crf), **X264_OPTIONS}
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


_REFORMATTER: Any = None
_FORK_GUARD = threading.Lock()
_FORK_HOOKED = False
_LEAKED: list[Any] = []  # PyAV scaler state inherited by a forked child: never freed (see below)


def _av() -> Any:
    """Import PyAV (lazily: importing avf_data.shards creates no PyAV state) and make forked
    children safe from PyAV state their parent created."""
    global _FORK_HOOKED
    import av

    with _FORK_GUARD:
        if not _FORK_HOOKED and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_forget_pyav_scaler)
            _FORK_HOOKED = True
    return av


def _forget_pyav_scaler() -> None:
    """In a forked child, drop the per-thread scaler PyAV keeps for ``frame.to_ndarray()``.

    PyAV's default scaler runs a thread pool; a child inherits the pool's state but not its
    threads, so its next conversion waits forever (the DataLoader-after-decode deadlock). The
    old object is kept, not freed: freeing it would join the threads that do not exist. This
    covers other code in the process; our own conversions never start such a pool.
    """
    global _REFORMATTER
    _REFORMATTER = None
    frame_module = sys.modules.get("av.video.frame")
    local = getattr(frame_module, "_thread_local", None)
    if local is not None:
        _LEAKED.append(local)
        frame_module._thread_local = threading.local()  # type: ignore[union-attr]


def _rgb(frame: Any) -> np.ndarray:
    """One decoded frame as (H, W, 3) uint8 RGB, converted on this thread only (fork-safe)."""
    global _REFORMATTER
    if _REFORMATTER is None:
        from av.video.reformatter import VideoReformatter

        _REFORMATTER = VideoReformatter()
    return _REFORMATTER.reformat(frame, format="rgb24", threads=1).to_ndarray()


def _open_video(data: bytes) -> tuple[Any, Any]:
    av = _av()
    try:  # naming the format skips probing (~0.3 ms a clip); anything else is probed
        container = av.open(io.BytesIO(data), format="mp4")
    except av.error.FFmpegError:
        container = av.open(io.BytesIO(data))
    try:
        if not container.streams.video:
            raise ValueError("mp4 sample holds no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "NONE"  # one clip per core is the parallelism; no
        stream.codec_context.thread_count = 1  # decoder threads to start, join or fork
    except BaseException:
        container.close()
        raise
    return container, stream


def _fps(stream: Any) -> float:
    return float(stream.average_rate or stream.base_rate or DEFAULT_FPS)


def decode_mp4(data: bytes) -> tuple[np.ndarray, float]:
    """Decode mp4 bytes into RGB frames (T, H, W, 3) uint8 and the stream's frame rate."""
    container, stream = _open_video(data)
    with container:
        fps = _fps(stream)
        frames = [_rgb(f) for f in container.decode(stream)]
    if not frames:
        raise ValueError("mp4 sample holds no decodable frames")
    return np.stack(frames), fps


class VideoReader:
    """An mp4 sample opened once: frame count and rate from its header, frames decoded on demand.

    A training view needs 16 of a clip's frames (16 at stride 4); decoding every frame and
    converting each to RGB was most of the loader's time. ``frames(indices)`` decodes forward
    only to the last wanted frame (seeking to the keyframe before the first one in long clips),
    lets the decoder skip the non-reference frames it does not want, and converts only the
    wanted ones. The result equals ``decode_mp4(data)[0][indices]``; a file whose timestamps
    do not allow that (no frame count, missing frames) falls back to decoding everything.
    """

    SEEK_MIN_FRAMES = 32
    """Seek only when the first wanted frame is at least this far in: below that, decoding
    the P-chain from the start costs less than a seek (measured on 160 px clips)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._container, self._stream = _open_video(data)
        self.fps = _fps(self._stream)
        self._header_frames = int(self._stream.frames or 0)
        self._all: np.ndarray | None = None
        self._used = False

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of the decoded RGB frames, from the stream's header."""
        codec = self._stream.codec_context
        return int(codec.height), int(codec.width), 3

    @property
    def num_frames(self) -> int:
        """Frames in the clip: the container's count, or a full decode when it has none."""
        if self._header_frames > 0:
            return self._header_frames
        return len(self._decode_all())

    def _decode_all(self) -> np.ndarray:
        if self._all is None:
            self._all, _ = decode_mp4(self._data)
        return self._all

    def frames(self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """RGB frames (len(indices), H, W, 3) uint8 at display positions ``indices`` (repeats
        allowed). Call once per reader: decoding runs forward.

        ``out``: an array to write them into when its shape fits (a loader reuses one: fresh
        memory costs a page fault per 4 KiB); the result is then a view of it.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self._used:
            raise RuntimeError("VideoReader.frames() reads forward and can be called once")
        self._used = True
        if len(idx) == 0:
            raise ValueError("no frame indices given")
        if self._all is None and self._stream.average_rate and 0 <= idx.min() and idx.max() < self.num_frames:
            got = self._decode_wanted(set(idx.tolist()))
            if got is not None:
                self.close()
                first = next(iter(got.values()))
                if out is not None and out.dtype == np.uint8 and out.shape[1:] == first.shape and len(out) >= len(idx):
                    result = out[: len(idx)]
                    for row, i in zip(result, idx.tolist(), strict=False):
                        row[...] = got[i]
                    return result
                return np.stack([got[i] for i in idx.tolist()])
        self.close()
        frames = self._decode_all()
        return frames[np.clip(idx, 0, len(frames) - 1)]

    def _decode_wanted(self, wanted: set[int]) -> dict[int, np.ndarray] | None:
        stream, container = self._stream, self._container
        codec = stream.codec_context
        step = 1 / (stream.time_base * stream.average_rate)  # timestamp units per frame (Fraction)
        origin = stream.start_time or 0
        if step.denominator == 1:  # the usual case (25 fps in 1/12800): exact timestamps, one lookup
            by_pts = {origin + i * step.numerator: i for i in wanted}
            position = by_pts.get
        else:

            def position(pts: int) -> int | None:
                i = round((pts - origin) / float(step))
                return i if i in wanted else None

        first = min(wanted)
        if first >= self.SEEK_MIN_FRAMES:
            container.seek(int(origin + first * step), stream=stream, backward=True, any_frame=False)
        got: dict[int, np.ndarray] = {}
        skipping, decode = False, codec.decode
        try:
            for packet in container.demux(stream):
                pts = packet.pts
                if pts is not None and (position(pts) is None) != skipping:
                    skipping = not skipping  # between wanted frames only reference frames are decoded
                    codec.skip_frame = "NONREF" if skipping else "DEFAULT"
                for frame in decode(packet):
                    i = None if frame.pts is None else position(frame.pts)
                    if i is not None and i not in got:
                        got[i] = _rgb(frame)
                if len(got) == len(wanted):
                    return got
        except Exception:  # noqa: BLE001 - a damaged stream: the full decode reports the real error
            return None
        return None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_audio(data: bytes, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, int]:
    """Decode wav/flac bytes into mono float32 samples and their sample rate.

    ``start``/``stop`` keep samples [start, stop) only, read after a seek: a training view needs
    2.6 s of a clip's audio.
    """
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as fh:
        total, sr = fh.frames, int(fh.samplerate)
        lo = min(max(start, 0), total)
        hi = total if stop is None else min(max(stop, lo), total)
        if lo:
            fh.seek(lo)
        audio = fh.read(hi - lo, dtype="float32", always_2d=True)
    return (audio[:, 0].copy() if audio.shape[1] == 1 else audio.mean(axis=1)), sr


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


def sample_meta(sample: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A raw sample's metadata (``label`` filled from ``cls`` when only that has it) and the
    name of its audio member; ValueError when the sample is not an avf clip."""
    key = sample.get("__key__", "?")
    missing = [ext for ext in ("mp4", "json") if ext not in sample]
    audio_ext = next((ext for ext in ("wav", "flac") if ext in sample), None)
    if missing or audio_ext is None:
        need = missing + ([] if audio_ext else ["wav|flac"])
        raise ValueError(f"sample {key!r} lacks {', '.join(need)}; is this an avf shard?")
    meta = json.loads(sample["json"])
    if "cls" in sample and "label" not in meta:
        meta["label"] = int(sample["cls"])
    return meta, audio_ext


def decode_sample(sample: dict[str, Any]) -> DecodedClip:
    """Decode one raw WebDataset sample (``{ext: bytes}``) into a :class:`DecodedClip`.

    This is the reader for avf shards in any WebDataset pipeline (``wds.WebDataset(url)
    .map(decode_sample)``): the stock ``torch_video``/``torch_audio`` decoders need torchvision
    and torchcodec, which the locked environment does not have.
    """
    key = sample.get("__key__", "?")
    meta, audio_ext = sample_meta(sample)
    frames, fps = decode_mp4(sample["mp4"])
    audio, sr = decode_audio(sample[audio_ext])
    return DecodedClip(key=key, frames=frames, fps=fps, audio=audio, sample_rate=sr, meta=meta)


# --------------------------------------------------------------------------- shard files


def expand_shards(pattern: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Resolve a glob, a folder, a brace pattern, a URL, a ``pipe:`` command, a single path or
    a list of these into sorted shard names (``avf_data.shard_urls``).

    Raises FileNotFoundError naming the pattern when nothing matches, because an empty
    training set is always a mistake worth stopping for.
    """
    return shard_urls.expand_urls(pattern)


def _sample_name(member: tarfile.TarInfo) -> tuple[str, str]:
    key, _, ext = os.path.basename(member.name).partition(".")
    return key, ext


def _iter_members(
    tar: tarfile.TarFile, url: str, exts: Collection[str] | None, file_size: int | None = None
) -> Iterator[dict[str, Any]]:
    """Samples of an open tar; every member is checked on its header first
    (:func:`avf_data.tars.check_member`: no links or devices, no member bigger than a sample's
    can be, none past the end of the file), and an error names the member at fault."""
    current: dict[str, Any] | None = None
    members = iter(tar)
    last: tarfile.TarInfo | None = None
    while True:
        try:
            member = next(members, None)
        except tarfile.TarError as exc:  # the header after ``last`` is bad or missing
            raise _shard_error(url, exc, last, after=True) from None
        if member is None:
            break
        last = member
        if not tars.check_member(member, url, file_size):
            continue
        key, ext = _sample_name(member)
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key, "__url__": url}
        if exts is None or ext in exts:
            try:
                handle = tar.extractfile(member)
                current[ext] = handle.read() if handle is not None else b""
            except (tarfile.TarError, EOFError) as exc:
                raise _shard_error(url, exc, member) from None
    if current is not None:
        yield current


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")


def _shard_error(url: str, exc: BaseException, member: tarfile.TarInfo | None, after: bool = False) -> OSError:
    """One line naming the shard and the member where reading failed (``after``: the failure
    is in what follows it, e.g. a body shorter than its header said)."""
    why = _first_line(exc)
    if member is None:
        return tars.ShardReadError(f"cannot read shard {url}: not a tar file ({why})")
    where = f"after member {member.name!r} ({member.size} bytes)" if after else f"member {member.name!r}"
    return tars.ShardReadError(f"cannot read shard {url}: {where}: {why} (truncated or not a tar file?)")


def iter_raw_samples(paths: Iterable[str], exts: Collection[str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield raw ``{ext: bytes, '__key__': key, '__url__': shard}`` samples from shards in order.

    ``paths`` are shard names as ``expand_shards`` returns them (local or remote). ``exts``
    keeps only those members (``("json", "cls")`` scans metadata; local shards then seek over
    the media, remote ones stream past it). No worker splitting or shuffling: the trainers add
    that on top. Errors are :class:`avf_data.tars.ShardReadError`, one line naming the shard
    and the member; a member's size is checked on its header before it is read.
    """
    for url in paths:
        local = shard_urls.local_path(url) if shard_urls.kind(url) == "local" else None
        size = _file_size(local)
        if local is not None and exts is not None:
            try:
                with tarfile.open(local) as tar:
                    yield from _iter_members(tar, url, exts, size)
            except (tarfile.TarError, EOFError) as exc:
                raise _shard_error(url, exc, None) from None
            continue
        handle = shard_urls.open_url(url)
        try:
            try:
                with tarfile.open(fileobj=handle, mode="r|*") as tar:
                    yield from _iter_members(tar, url, exts, size)
            except (tarfile.TarError, EOFError) as exc:
                if isinstance(handle, shard_urls.PipeReader):
                    handle.finish()  # a failed command explains a short or empty stream best
                raise _shard_error(url, exc, None) from None
            if isinstance(handle, shard_urls.PipeReader):
                handle.finish()
        finally:
            handle.close()


_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd


def _file_size(path: str | None) -> int | None:
    """Bytes of a local uncompressed shard (its members must end within them); None for a
    remote or compressed one, whose member offsets count other bytes."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            if fh.read(6).startswith(_COMPRESSED):
                return None
            return os.fstat(fh.fileno()).st_size
    except OSError:
        return None


def iter_shard_from(shard: str, start: int, index: tars.ShardIndex | None = None) -> Iterator[dict[str, Any]]:
    """Samples ``start, start + 1, ...`` of one shard: after one seek for a local shard whose
    index has offsets, else by reading past the first ``start`` samples (a remote shard)."""
    if start <= 0:
        yield from iter_raw_samples([shard])
        return
    if shard_urls.kind(shard) == "local":
        index = index or read_index(shard)
        if index is not None and index.offsets is not None:
            for sample in tars.iter_samples_from(shard_urls.local_path(shard), index, start):
                yield {**sample, "__url__": shard}
            return
    for i, sample in enumerate(iter_raw_samples([shard])):
        if i >= start:
            yield sample


def read_shard_samples(shard: str, indices: Collection[int]) -> dict[int, dict[str, Any]]:
    """Samples ``indices`` of one shard by their position: a seek each with an offsets index,
    else one pass over the shard up to the last one wanted."""
    wanted = set(int(i) for i in indices)
    if not wanted:
        return {}
    if shard_urls.kind(shard) == "local":
        index = read_index(shard)
        if index is not None and index.offsets is not None:
            path = shard_urls.local_path(shard)
            return {i: {**tars.read_sample_at(path, index, i), "__url__": shard} for i in sorted(wanted)}
    out: dict[int, dict[str, Any]] = {}
    last = max(wanted)
    for i, sample in enumerate(iter_raw_samples([shard])):
        if i in wanted:
            out[i] = sample
        if i >= last:
            break
    return out


# --------------------------------------------------------------------------- sample counts


INDEX_SUFFIX = tars.INDEX_SUFFIX


def index_name(shard: str) -> str | None:
    """The index next to a shard: ``a-000000.tar`` -> ``a-000000.idx.json`` (paths, URLs and
    ``pipe:`` commands that name the shard once); None when the name has no ``.tar``."""
    return shard_urls.sibling(shard, ".tar", INDEX_SUFFIX)


def read_index(shard: str) -> tars.ShardIndex | None:
    """The index of ``shard`` (local or remote) if there is one that fits it: a local shard
    rewritten since (``avf-data sync``) has another size than its index says, and a stat tells."""
    if shard_urls.kind(shard) == "local":
        return tars.read_local_index(shard_urls.local_path(shard))
    name = index_name(shard)
    raw = shard_urls.read_small(name) if name else None
    if raw is None:
        return None
    try:
        return tars.ShardIndex.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


def _index_count(shard: str) -> int | None:
    index = read_index(shard)
    return None if index is None else index.samples


def _manifest_counts(shards: list[str]) -> dict[str, int]:
    """Counts from the build's ``manifest.jsonl`` (``<build>/shards/x.tar``, one row per clip)
    for local shards not newer than their manifest: builds made before shards had an index."""
    by_build: dict[Path, dict[str, Path]] = {}
    for shard in shards:
        if shard_urls.kind(shard) == "local":
            path = Path(shard_urls.local_path(shard)).resolve()
            by_build.setdefault(path.parent.parent, {})[shard] = path
    out: dict[str, int] = {}
    for build, members in by_build.items():
        manifest = build / "manifest.jsonl"
        rows: Counter[Path] = Counter()
        try:
            built = manifest.stat().st_mtime
            with open(manifest, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        rows[(build / json.loads(line)["shard"]).resolve()] += 1
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for shard, path in members.items():
            try:
                if path in rows and path.stat().st_mtime <= built:
                    out[shard] = rows[path]
            except OSError:
                pass
    return out


def _scan_count(shard: str) -> int:
    return sum(1 for _ in iter_raw_samples([shard], exts=()))


def shard_counts(shards: Sequence[str], *, threads: int = 16) -> list[int]:
    """Samples in each shard, read from the indices next to the shards (fetched in parallel),
    else from the build's manifest, else by reading the shard (tar headers only for a local
    file; a remote one is downloaded, so every remote shard without an index is named in one
    warning)."""
    shards = list(shards)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(shards)))) as pool:
        counts: list[int | None] = list(pool.map(_index_count, shards))
    missing = [s for s, c in zip(shards, counts, strict=False) if c is None]
    from_manifest = _manifest_counts(missing) if missing else {}
    remote = [s for s in missing if s not in from_manifest and shard_urls.kind(s) != "local"]
    if remote:
        print(
            f"avf-data: warning: {len(remote)} remote shard(s) have no {INDEX_SUFFIX} index "
            f"(first: {remote[0]}); counting their samples means reading them",
            file=sys.stderr,
        )
    return [
        c if c is not None else from_manifest.get(s) if s in from_manifest else _scan_count(s)
        for s, c in zip(shards, counts, strict=False)
    ]


def iter_clips(pattern: str | os.PathLike | Iterable[str]) -> Iterator[DecodedClip]:
    """Decode every sample of the shards matching ``pattern``."""
    for sample in iter_raw_samples(expand_shards(pattern)):
        yield decode_sample(sample)


class ShardWriter:
    """Writes samples into numbered shards ``<prefix>-NNNNNN.tar``, each one atomically.

    Samples go to a ``.tar.tmp`` file (through :class:`avf_data.tars.SampleTarWriter`, the one
    tar writer) that is renamed once the shard is full or the writer is closed, its index
    written just before; ``first_index`` lets a resumed run continue the numbering.

    With ``defer_rename=True`` full shards stay ``.tar.tmp`` (closed and fsynced) until
    :meth:`commit` (or ``close``) renames all of them together, so a group of shards appears
    at once; :meth:`abort` deletes them instead.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        prefix: str = "shard",
        max_count: int = 1000,
        max_bytes: int = 1 << 30,
        first_index: int = 0,
        defer_rename: bool = False,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.max_bytes = prefix, max_count, max_bytes
        self.index = first_index
        self.defer_rename = defer_rename
        self.written: list[Path] = []
        self._deferred: list[tuple[Path, tars.ShardIndex]] = []  # complete .tmp files, not renamed
        self._fh: Any = None
        self._tar: tars.SampleTarWriter | None = None

    def _path(self) -> Path:
        return self.folder / f"{self.prefix}-{self.index:06d}.tar"

    def write(self, sample: ClipSample | dict[str, Any]) -> Path:
        """Add one sample; returns the final path of the shard that will hold it."""
        record = sample.to_wds() if isinstance(sample, ClipSample) else sample
        if self._tar is None:
            self._fh = open(str(self._path()) + ".tmp", "wb")
            self._tar = tars.SampleTarWriter(self._fh)
        self._tar.write(record)
        target = self._path()
        if len(self._tar.index.offsets) >= self.max_count or self._tar.position >= self.max_bytes:
            self.flush()
        return target

    def flush(self) -> None:
        """Close the current shard (if any) and move it to its final name."""
        if self._tar is None:
            return
        size = self._tar.finish()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        index = self._tar.index.build(self._tar.position, size)
        final = self._path()
        if self.defer_rename:
            self._deferred.append((final, index))
        else:
            self._rename(final, index)
        self._fh = self._tar = None
        self.index += 1

    def commit(self) -> None:
        """Close the current shard and rename every deferred shard to its final name."""
        self.flush()
        for final, index in self._deferred:
            self._rename(final, index)
        if self._deferred:
            tars.fsync_dir(self.folder)
        self._deferred = []

    def abort(self) -> None:
        """Drop everything not renamed yet (the open shard and deferred ones)."""
        if self._tar is not None:
            try:
                self._fh.close()
            except Exception:  # pragma: no cover - already failing
                pass
            self._deferred.append((self._path(), tars.ShardIndex(0, 0)))
            self._fh = self._tar = None
        for final, _ in self._deferred:
            Path(str(final) + ".tmp").unlink(missing_ok=True)
        self._deferred = []

    def _rename(self, final: Path, index: tars.ShardIndex) -> None:
        tars.write_index(final, index)
        os.replace(str(final) + ".tmp", final)
        self.written.append(final)

    def close(self) -> None:
        self.commit()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is not None and self.defer_rename:
            self.abort()
        else:
            self.close()
