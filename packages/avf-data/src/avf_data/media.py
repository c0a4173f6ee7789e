"""Media IO with PyAV only (no ffmpeg/ffprobe executables are needed).

:func:`load_media` decodes an input file once into 25 fps RGB frames and 16 kHz mono audio,
so every stage works on the same in-memory arrays. Problems with the file are raised as
:class:`MediaError` whose message is the reject reason written to ``rejects.jsonl``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .shards import SAMPLE_RATE


class MediaError(Exception):
    """The input cannot be curated; ``str(err)`` is a short human-readable reason."""


@dataclass
class MediaConfig:
    """How inputs are decoded.

    fps: output frame rate; any input rate is resampled to it (nearest earlier frame).
    sample_rate: output audio rate (mono).
    max_pixels: inputs with more pixels per frame are rejected as "huge resolution".
    max_work_side: frames whose longer side exceeds this are downscaled at decode time
        (detection and 160 px crops do not need more; it bounds memory).
    max_seconds: longer inputs are rejected.
    chunk_seconds: the pipeline holds at most this much decoded video in memory; longer
        inputs are curated chunk by chunk (a chunk boundary acts as a scene cut).
    min_seconds: shorter (or empty) inputs are rejected as zero length.
    decode_threads: codec threads per decode (1 suits a pool with one worker per core).
    vfr_tolerance: relative spread of frame durations above which the input is called
        variable frame rate. VFR inputs are resampled to constant rate like any other
        unless ``reject_vfr`` is set.
    """

    fps: float = 25.0
    sample_rate: int = SAMPLE_RATE
    max_pixels: int = 4096 * 2304
    max_work_side: int = 1280
    max_seconds: float = 4 * 3600.0
    chunk_seconds: float = 60.0
    min_seconds: float = 0.04
    vfr_tolerance: float = 0.5
    reject_vfr: bool = True
    decode_threads: int = 1


@dataclass
class Media:
    """A decoded input: constant-rate frames and aligned mono audio."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB at ``fps``
    audio: np.ndarray  # (N,) float32 at ``sample_rate``; padded/trimmed to T / fps seconds
    fps: float
    sample_rate: int
    source_fps: float
    source_size: tuple[int, int]  # (width, height) before any downscale
    audio_coverage: float  # fraction of the video duration that the audio track covered
    start_frame: int = 0  # offset of this chunk in the whole input (see iter_media)

    @property
    def num_frames(self) -> int:
        return int(len(self.frames))

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    def audio_slice(self, start_frame: int, end_frame: int) -> np.ndarray:
        """Audio samples matching frames ``[start_frame, end_frame)``."""
        spf = self.sample_rate / self.fps
        return self.audio[int(round(start_frame * spf)):int(round(end_frame * spf))]


def path_text(path: str | os.PathLike | bytes) -> str:
    """A printable, JSON-safe spelling of a path (non-UTF-8 bytes become ``\\udcXX`` escapes
    and are then shown with backslashreplace)."""
    text = os.fsdecode(path)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def probe_seconds(path: str | os.PathLike) -> float:
    """Container duration in seconds (0.0 when unknown); used by the benchmark and stats."""
    import av

    try:
        with av.open(os.fspath(path)) as c:
            if c.duration:
                return c.duration / 1_000_000
            s = c.streams.video[0] if c.streams.video else None
            if s is not None and s.duration and s.time_base:
                return float(s.duration * s.time_base)
    except Exception:
        pass
    return 0.0


def load_media(path: str | os.PathLike, cfg: MediaConfig | None = None) -> Media:
    """Decode ``path`` once into one :class:`Media`: video resampled to ``cfg.fps``, audio to
    ``cfg.sample_rate`` mono. Raises MediaError (see :func:`iter_media`)."""
    chunks = list(iter_media(path, cfg, chunk_frames=0))
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    return Media(frames=np.concatenate([c.frames for c in chunks]), audio=np.concatenate([c.audio for c in chunks]),
                 fps=first.fps, sample_rate=first.sample_rate, source_fps=first.source_fps,
                 source_size=first.source_size,
                 audio_coverage=float(np.mean([c.audio_coverage for c in chunks])))


def open_checked(path: str | os.PathLike, cfg: MediaConfig):
    """Open ``path`` with PyAV after the cheap checks; returns the container."""
    import av

    fspath = os.fspath(path)
    if isinstance(fspath, str):
        try:
            fspath.encode("utf-8")
        except UnicodeEncodeError:
            raise MediaError("path is not valid UTF-8; rename the file") from None
    if not os.path.exists(fspath):
        raise MediaError("file does not exist")
    if os.path.getsize(fspath) == 0:
        raise MediaError("zero length: empty file")
    try:
        container = av.open(fspath)
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise MediaError(f"corrupt or unsupported file: cannot open ({type(exc).__name__}: {exc})") from None
    try:
        if not container.streams.video:
            raise MediaError("no video stream")
        if not container.streams.audio:
            raise MediaError("no audio track")
        vstream = container.streams.video[0]
        width, height = int(vstream.codec_context.width or 0), int(vstream.codec_context.height or 0)
        if width * height > cfg.max_pixels:
            raise MediaError(f"huge resolution {width}x{height} (> {cfg.max_pixels} pixels)")
        if container.duration and container.duration / 1e6 > cfg.max_seconds:
            raise MediaError(f"too long: {container.duration / 1e6:.1f} s > max_seconds {cfg.max_seconds}")
    except MediaError:
        container.close()
        raise
    return container


def iter_media(path: str | os.PathLike, cfg: MediaConfig | None = None, chunk_frames: int = 0):
    """Decode ``path`` once, yielding consecutive :class:`Media` chunks of ``chunk_frames``
    output frames (0 = everything in one chunk); ``chunk.start_frame`` is its offset.

    Memory stays bounded by one chunk of frames (audio is decoded whole: it is small).
    Raises MediaError for: unreadable/corrupt files, missing video or audio stream, zero
    length, variable frame rate (when ``reject_vfr``), huge resolution, too long inputs; the
    VFR and length checks may only fire after some chunks were yielded.
    """
    cfg = cfg or MediaConfig()
    fspath = os.fspath(path)
    container = open_checked(fspath, cfg)
    with container:
        vstream = container.streams.video[0]
        width, height = int(vstream.codec_context.width or 0), int(vstream.codec_context.height or 0)
        audio, covered = _decode_audio(fspath, cfg.sample_rate)
        fps = cfg.fps
        spf = cfg.sample_rate / fps
        src_fps = 0.0
        buf: list[np.ndarray] = []
        start = 0

        def emit(final: bool):
            nonlocal buf, start
            frames = np.stack(buf)
            a0, a1 = int(round(start * spf)), int(round((start + len(frames)) * spf))
            chunk_audio = audio[a0:a1]
            if len(chunk_audio) < a1 - a0:
                chunk_audio = np.pad(chunk_audio, (0, a1 - a0 - len(chunk_audio)))
            cov = min(1.0, max(0, covered - a0) / max(1, a1 - a0))
            m = Media(frames=frames, audio=chunk_audio.astype(np.float32, copy=False), fps=fps,
                      sample_rate=cfg.sample_rate, source_fps=src_fps, source_size=(width, height),
                      audio_coverage=cov, start_frame=start)
            start += len(frames)
            buf = []
            return m

        times: list[float] = []
        prev = None
        k = 0
        for img, t, src_fps in _decode_video(container, vstream, cfg, width, height):
            times.append(t)
            if len(times) == 100:
                _check_vfr(np.asarray(times), cfg)
            if t > cfg.max_seconds:
                raise MediaError(f"too long: more than max_seconds {cfg.max_seconds} s of video")
            if prev is not None:
                while k / fps + 1e-6 < t:
                    buf.append(prev)
                    k += 1
                    if chunk_frames and len(buf) >= chunk_frames:
                        yield emit(False)
            prev = img
        if prev is None:
            raise MediaError("zero length: no decodable video frames")
        times_arr = np.asarray(times, dtype=np.float64)
        _check_vfr(times_arr, cfg)
        duration = _video_duration(times_arr, src_fps or fps)
        if duration < cfg.min_seconds:
            raise MediaError(f"zero length: {duration:.3f} s of video")
        n_out = max(1, int(math.floor(duration * fps + 1e-6)))
        while k < n_out:
            buf.append(prev)
            k += 1
            if chunk_frames and len(buf) >= chunk_frames and k < n_out:
                yield emit(False)
        if buf:
            yield emit(True)


def _decode_video(container, vstream, cfg: MediaConfig, width: int, height: int):
    """Yield (rgb frame at work resolution, time in s from the first frame, source fps)."""
    import av

    if cfg.decode_threads != 1:
        vstream.thread_type = "AUTO"
        vstream.codec_context.thread_count = max(0, cfg.decode_threads)
    rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
    src_fps = float(rate) if rate else cfg.fps
    tb = vstream.time_base or Fraction(1, 1_000_000)
    scale = 1.0
    if max(width, height) > cfg.max_work_side > 0:
        scale = cfg.max_work_side / max(width, height)
    out_w = max(2, int(round(width * scale / 2)) * 2)
    out_h = max(2, int(round(height * scale / 2)) * 2)
    t0 = None
    last = -1.0
    i = 0
    try:
        for frame in container.decode(vstream):
            if frame.pts is not None:
                t = float(frame.pts * tb)
            else:
                t = i / src_fps
            i += 1
            if t0 is None:
                t0 = t
            t -= t0
            if t <= last:  # out-of-order or duplicate timestamp: keep the stream monotonic
                continue
            last = t
            if scale != 1.0:
                img = frame.to_ndarray(format="rgb24", width=out_w, height=out_h)
            else:
                img = frame.to_ndarray(format="rgb24")
            yield img, t, src_fps
    except av.error.FFmpegError as exc:
        if t0 is None:
            raise MediaError(f"corrupt video stream: {exc}") from None
        # A truncated file: keep what decoded; the missing tail is simply not part of the input.


def _video_duration(times: np.ndarray, src_fps: float) -> float:
    if len(times) == 1:
        return 1.0 / src_fps
    step = np.median(np.diff(times)) if len(times) > 1 else 1.0 / src_fps
    return float(times[-1] - times[0] + step)


def _check_vfr(times: np.ndarray, cfg: MediaConfig) -> None:
    if len(times) < 3 or not cfg.reject_vfr:
        return
    d = np.diff(times)
    med = float(np.median(d))
    if med <= 0:
        raise MediaError("broken timestamps: frames share one presentation time")
    spread = (np.percentile(d, 95) - np.percentile(d, 5)) / med
    if spread > cfg.vfr_tolerance:
        raise MediaError(f"variable frame rate (frame durations vary by {spread:.0%}); "
                         "re-encode to constant rate or set media.reject_vfr: false")


def _decode_audio(path: str, sample_rate: int) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to mono float32 at ``sample_rate``; returns the audio and
    the number of samples that came from the file (before any padding)."""
    import av

    chunks: list[np.ndarray] = []
    try:
        with av.open(path) as container:
            astream = container.streams.audio[0]
            start = astream.start_time
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            lead = 0
            vs = container.streams.video[0] if container.streams.video else None
            if vs is not None and vs.start_time is not None and start is not None:
                # Align audio to the first video frame (time 0 of the resampled video).
                offset = float(start * astream.time_base) - float(vs.start_time * vs.time_base)
                lead = int(round(offset * sample_rate))
            for frame in container.decode(astream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        if not chunks:
            raise MediaError(f"corrupt audio stream: {exc}") from None
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if not len(audio):
        raise MediaError("audio track holds no samples")
    if lead > 0:
        audio = np.concatenate([np.zeros(lead, np.float32), audio])
    elif lead < 0:
        audio = audio[-lead:]
    return audio.astype(np.float32, copy=False), len(audio)
