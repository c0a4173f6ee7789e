"""Media IO with PyAV only (no ffmpeg/ffprobe executables are needed).

Decoding streams: :func:`open_media` checks a file and returns a :class:`MediaReader` whose
:meth:`MediaReader.frames` yields the video at a constant ``cfg.fps`` and whose audio is
read piece by piece as 16 kHz mono, so nothing holds a whole input in memory. Variable
frame rate (phone and web video) is resampled like any other rate: output frame ``k`` is the
source frame whose presentation time is nearest to ``k / fps`` (what ``ffmpeg -r 25`` does in
the reference pipelines), and the audio is cut by the same clock, so it stays aligned.

Stereo is downmixed as ``(L + R) / 2`` (``ffmpeg -ac 1``), not FFmpeg's default
``(L + R) / sqrt(2)``, which changes loudness-based scores and can clip loud stereo.

:func:`load_media` decodes a whole (short) input into RGB arrays for tests and tools.
Problems with a file are raised as :class:`MediaError`: ``code`` is a stable reason code
(``decode.corrupt``, ...) and ``str(err)`` a human-readable detail.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from .shards import SAMPLE_RATE


class MediaError(Exception):
    """The input cannot be curated; ``code`` is a reason code, ``str(err)`` the detail."""

    def __init__(self, message: str, code: str = "decode.corrupt") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class MediaConfig:
    """How inputs are decoded.

    fps: output frame rate; any input rate (constant or variable) is resampled to it by
        nearest presentation timestamp.
    sample_rate: output audio rate (mono).
    max_pixels: inputs with more pixels per frame are rejected as "huge resolution".
    max_seconds: longer inputs are rejected.
    chunk_seconds: the pipeline curates at most this much video at a time (a chunk
        boundary acts as a scene cut); with the default face-region size this bounds a
        worker's frame memory to a few hundred MB whatever the input's resolution or length.
    min_seconds: shorter (or empty) inputs are rejected as zero length.
    decode_threads: codec threads per decode (1 suits a pool with one worker per core).
    vfr_tolerance: relative spread of frame durations above which an input is recorded as
        variable frame rate (``source_vfr`` in the clip metadata); it is resampled all the same.
    truncated_seconds: when the container promises this much more video than decodes, the
        undecodable tail becomes a ``decode.truncated`` reject row.
    """

    fps: float = 25.0
    sample_rate: int = SAMPLE_RATE
    max_pixels: int = 4096 * 2304
    max_seconds: float = 4 * 3600.0
    chunk_seconds: float = 40.0
    min_seconds: float = 0.04
    decode_threads: int = 1
    vfr_tolerance: float = 0.5
    truncated_seconds: float = 0.5


@dataclass
class SourceInfo:
    """What the container says about an input, before any decoding."""

    width: int  # as displayed (after rotation)
    height: int
    fps: float  # the stream's average rate
    duration: float  # container duration in seconds (0.0 when unknown)
    rotation: int  # counter-clockwise degrees that turn the stored picture upright (0/90/180/270);
    # known once the first frame is decoded
    channels: int


def path_text(path: str | os.PathLike | bytes) -> str:
    """A printable, JSON-safe spelling of a path (non-UTF-8 bytes become ``\\udcXX`` escapes
    and are then shown with backslashreplace)."""
    text = os.fsdecode(path)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def probe_seconds(path: str | os.PathLike) -> float:
    """Container duration in seconds (0.0 when unknown or not a regular file)."""
    import av

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return 0.0
        with av.open(os.fspath(path), timeout=10.0) as c:
            if c.duration:
                return c.duration / 1_000_000
            s = c.streams.video[0] if c.streams.video else None
            if s is not None and s.duration and s.time_base:
                return float(s.duration * s.time_base)
    except Exception:
        pass
    return 0.0


def check_file(path: str | os.PathLike) -> None:
    """The cheap checks before PyAV opens a file (a FIFO or a folder would hang or fail
    obscurely inside FFmpeg)."""
    fspath = os.fspath(path)
    if isinstance(fspath, str):
        try:
            fspath.encode("utf-8")
        except UnicodeEncodeError:
            raise MediaError("path is not valid UTF-8; rename the file", "decode.path") from None
    try:
        st = os.stat(fspath)
    except FileNotFoundError:
        raise MediaError("file does not exist", "decode.missing") from None
    except PermissionError:
        raise MediaError("permission denied", "decode.unreadable") from None
    except OSError as exc:
        raise MediaError(f"cannot read: {exc.strerror}", "decode.unreadable") from None
    if stat.S_ISDIR(st.st_mode):
        raise MediaError("a folder, not a video file", "decode.not_a_file")
    if not stat.S_ISREG(st.st_mode):
        raise MediaError("not a regular file (FIFO, socket or device)", "decode.not_a_file")
    if st.st_size == 0:
        raise MediaError("zero length: empty file", "decode.empty")
    if not os.access(fspath, os.R_OK):
        raise MediaError("permission denied", "decode.unreadable")


def frame_rotation(frame: Any) -> int:
    """Counter-clockwise degrees (0/90/180/270) that turn a decoded picture upright for display,
    from its display matrix (phone video is often stored sideways with such a matrix)."""
    try:
        rot = frame.rotation
    except Exception:  # pragma: no cover - frames without side data
        return 0
    return int(round((rot or 0) / 90.0)) * 90 % 360


def ffmpeg_reason(exc: BaseException) -> str:
    """An FFmpeg error in words, without the file name PyAV appends (reject rows name their
    source already, and an absolute path says where the curator's files are)."""
    strerror, filename = getattr(exc, "strerror", None), getattr(exc, "filename", None)
    if strerror:
        return str(strerror)
    text = str(exc)
    return text.replace(f": {filename!r}", "").replace(str(filename), "<file>") if filename else text


def open_checked(path: str | os.PathLike, cfg: MediaConfig):
    """Open ``path`` with PyAV after the cheap checks; returns the container."""
    import av

    check_file(path)
    try:
        container = av.open(os.fspath(path), timeout=30.0)
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise MediaError(
            f"corrupt or unsupported file: cannot open ({type(exc).__name__}: {ffmpeg_reason(exc)})", "decode.corrupt"
        ) from None
    try:
        if not container.streams.video:
            raise MediaError("no video stream", "decode.no_video")
        if not container.streams.audio:
            raise MediaError("no audio track", "decode.no_audio")
        vstream = container.streams.video[0]
        width, height = int(vstream.codec_context.width or 0), int(vstream.codec_context.height or 0)
        if width * height > cfg.max_pixels:
            raise MediaError(f"huge resolution {width}x{height} (> {cfg.max_pixels} pixels)", "decode.huge")
        if container.duration and container.duration / 1e6 > cfg.max_seconds:
            raise MediaError(
                f"too long: {container.duration / 1e6:.1f} s > max_seconds {cfg.max_seconds}", "decode.too_long"
            )
    except MediaError:
        container.close()
        raise
    return container


class AudioStream:
    """The first audio track as 16 kHz mono float32, read in pieces aligned with the video.

    Sample 0 is the time of the first video frame (a track that starts later is padded with
    silence, one that starts earlier is trimmed), so ``read`` for output frames ``[a, b)`` is
    the audio of exactly those frames. Past the end of the track ``read`` pads with zeros and
    ``covered`` stops growing, which is how scene detection finds incomplete segments.
    """

    def __init__(self, path: str, sample_rate: int, video_start: float | None) -> None:
        import av

        self.sample_rate = sample_rate
        self.container = av.open(path, timeout=30.0)
        astream = self.container.streams.audio[0]
        self.channels = int(astream.codec_context.channels or 1)
        lead = 0
        if video_start is not None and astream.start_time is not None:
            lead = int(round((float(astream.start_time * astream.time_base) - video_start) * sample_rate))
        self._skip = max(0, -lead)
        self._pending: list[np.ndarray] = [np.zeros(max(0, lead), np.float32)] if lead > 0 else []
        self._buffered = max(0, lead)
        self._lead = max(0, lead)
        self.covered = 0  # samples handed out that came from the file
        self._served = 0
        self._exhausted = False
        self._gen = self._decode(astream)
        self.failed: str | None = None

    def _decode(self, astream) -> Iterator[np.ndarray]:
        import av

        stereo = self.channels == 2
        layout = "stereo" if stereo else "mono"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.sample_rate)

        def mono(frames) -> Iterator[np.ndarray]:
            for out in frames:
                a = out.to_ndarray()
                yield (a[0] + a[1]) * 0.5 if stereo else a.reshape(-1)

        try:
            for frame in self.container.decode(astream):
                yield from mono(resampler.resample(frame))
        except av.error.FFmpegError as exc:
            self.failed = str(exc)
        try:
            yield from mono(resampler.resample(None))
        except av.error.FFmpegError:  # pragma: no cover
            pass

    def _fill(self, n: int) -> None:
        while self._buffered < n and not self._exhausted:
            piece = next(self._gen, None)
            if piece is None:
                self._exhausted = True
                break
            if self._skip:
                cut = min(self._skip, len(piece))
                piece = piece[cut:]
                self._skip -= cut
            if len(piece):
                self._pending.append(piece.astype(np.float32, copy=False))
                self._buffered += len(piece)

    def has_samples(self) -> bool:
        """Whether the track holds any audio at all (decodes the first piece)."""
        self._fill(self._lead + 1)
        return self._buffered > self._lead

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` samples (zero-padded past the end of the track)."""
        self._fill(n)
        data = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        out, rest = data[:n], data[n:]
        self._pending = [rest] if len(rest) else []
        self._buffered = len(rest)
        real_before = max(0, self._served - self._lead)
        self._served += len(out)
        real_after = max(0, self._served - self._lead)
        self.covered += max(0, real_after - real_before)
        if len(out) < n:
            out = np.concatenate([out, np.zeros(n - len(out), np.float32)])
        return out

    def close(self) -> None:
        self.container.close()


@dataclass
class VideoClock:
    """Decoding statistics: what ``frames`` saw of the source's timestamps."""

    decoded: int = 0  # source frames decoded
    output: int = 0  # frames emitted at the output rate
    vfr: bool = False
    duration: float = 0.0  # decoded video seconds (last - first timestamp + one frame)
    truncated_error: str | None = None  # decoder error that ended the stream early


class MediaReader:
    """An opened, checked input: streams its video at ``cfg.fps`` and its audio at 16 kHz."""

    def __init__(self, path: str | os.PathLike, cfg: MediaConfig | None = None) -> None:
        self.cfg = cfg or MediaConfig()
        self.path = os.fspath(path)
        self.container = open_checked(self.path, self.cfg)
        v = self.container.streams.video[0]
        self.vstream = v
        rate = v.average_rate or v.guessed_rate or v.base_rate
        w, h = int(v.codec_context.width or 0), int(v.codec_context.height or 0)
        duration = self.container.duration / 1e6 if self.container.duration else 0.0
        self.info = SourceInfo(
            width=w,
            height=h,
            fps=float(rate) if rate else self.cfg.fps,
            duration=duration,
            rotation=0,
            channels=int(self.container.streams.audio[0].codec_context.channels or 1),
        )
        vstart = float(v.start_time * v.time_base) if v.start_time is not None and v.time_base else None
        self.audio = AudioStream(self.path, self.cfg.sample_rate, vstart)
        if not self.audio.has_samples():
            self.close()
            raise MediaError(
                "audio track holds no samples"
                if self.audio.failed is None
                else f"corrupt audio stream: {self.audio.failed}",
                "decode.no_audio",
            )
        self.clock = VideoClock()

    def __enter__(self) -> MediaReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.container.close()
        finally:
            self.audio.close()

    def _set_rotation(self, rotation: int) -> None:
        """Known from the first frame's display matrix: width/height become the upright ones."""
        info = self.info
        if rotation in (90, 270) and info.rotation not in (90, 270):
            info.width, info.height = info.height, info.width
        info.rotation = rotation

    def _decoded(self) -> Iterator[tuple[Any, float]]:
        """(av.VideoFrame, seconds since the first frame), timestamps strictly increasing."""
        import av

        v = self.vstream
        if self.cfg.decode_threads != 1:
            v.thread_type = "AUTO"
            v.codec_context.thread_count = max(0, self.cfg.decode_threads)
        tb = v.time_base or Fraction(1, 1_000_000)
        step = 1.0 / self.info.fps
        t0 = None
        last = -1.0
        i = 0
        try:
            for frame in self.container.decode(v):
                t = float(frame.pts * tb) if frame.pts is not None else i * step
                i += 1
                if t0 is None:
                    t0 = t
                    self._set_rotation(frame_rotation(frame))
                t -= t0
                if t <= last:  # out-of-order or duplicate timestamp: keep the stream monotonic
                    continue
                last = t
                yield frame, t
        except av.error.FFmpegError as exc:
            if t0 is None:
                raise MediaError(f"corrupt video stream: {ffmpeg_reason(exc)}", "decode.corrupt") from None
            self.clock.truncated_error = str(exc)

    def frames(self) -> Iterator[tuple[int, Any]]:
        """Yield ``(k, av.VideoFrame)`` for output frames ``k = 0, 1, ...`` at ``cfg.fps``: the
        source frame whose timestamp is nearest to ``k / fps`` (a frame may repeat or be
        dropped). Raises MediaError for undecodable video, broken timestamps or too long input."""
        fps = self.cfg.fps
        clock = self.clock
        prev = None
        t_prev = 0.0
        diffs: list[float] = []
        k = 0
        for frame, t in self._decoded():
            clock.decoded += 1
            if t > self.cfg.max_seconds:
                raise MediaError(
                    f"too long: more than max_seconds {self.cfg.max_seconds} s of video", "decode.too_long"
                )
            if prev is not None:
                diffs.append(t - t_prev)
                mid = (t_prev + t) / 2
                while k / fps <= mid + 1e-9:
                    yield k, prev
                    k += 1
            prev, t_prev = frame, t
        if prev is None:
            raise MediaError("zero length: no decodable video frames", "decode.empty")
        d = np.asarray(diffs) if diffs else np.zeros(0)
        step = float(np.median(d)) if len(d) else 1.0 / self.info.fps
        if len(d) >= 2 and step <= 0:  # pragma: no cover - filtered above
            raise MediaError("broken timestamps: frames share one presentation time", "decode.timestamps")
        if len(d) >= 3:
            spread = (np.percentile(d, 95) - np.percentile(d, 5)) / step
            clock.vfr = bool(spread > self.cfg.vfr_tolerance)
        clock.duration = t_prev + step
        if clock.duration < self.cfg.min_seconds:
            raise MediaError(f"zero length: {clock.duration:.3f} s of video", "decode.empty")
        n_out = max(1, int(math.floor(clock.duration * fps + 1e-6)))
        if k > n_out:  # pragma: no cover - rounding at the very end
            n_out = k
        while k < n_out:
            yield k, prev
            k += 1
        clock.output = k


def frame_rgb(frame: Any, rotation: int = 0) -> np.ndarray:
    """A decoded frame as an RGB array, turned upright for display."""
    img = frame.to_ndarray(format="rgb24")
    return rotate_upright(img, rotation)


def rotate_upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored picture counter-clockwise by ``rotation`` degrees (see frame_rotation)."""
    if rotation % 360 == 0:
        return img
    return np.ascontiguousarray(np.rot90(img, rotation // 90))


class FramesWithAudio:
    """Frames at ``fps`` with the audio of exactly those frames at ``sample_rate``: what a
    whole decoded input (:class:`Media`) and a stretch of one (``chunks.Chunk``) share."""

    fps: float
    sample_rate: int
    audio: np.ndarray
    num_frames: int  # each kind defines it as a property over its own frame array

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    def audio_slice(self, start_frame: int, end_frame: int) -> np.ndarray:
        """Audio samples matching frames ``[start_frame, end_frame)``."""
        spf = self.sample_rate / self.fps
        return self.audio[int(round(start_frame * spf)) : int(round(end_frame * spf))]


@dataclass
class Media(FramesWithAudio):
    """A whole decoded input (tests and tools): constant-rate frames and aligned mono audio."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB at ``fps``
    audio: np.ndarray  # (N,) float32 at ``sample_rate``; padded/trimmed to T / fps seconds
    fps: float
    sample_rate: int
    source_fps: float
    source_size: tuple[int, int]  # (width, height)
    audio_coverage: float  # fraction of the video duration that the audio track covered
    source_vfr: bool = False

    @property
    def num_frames(self) -> int:
        return int(len(self.frames))


def load_media(path: str | os.PathLike, cfg: MediaConfig | None = None) -> Media:
    """Decode all of ``path`` into memory at ``cfg.fps`` / ``cfg.sample_rate`` (short inputs:
    tests, tools). The curation pipeline streams instead (:mod:`avf_data.chunks`)."""
    cfg = cfg or MediaConfig()
    with MediaReader(path, cfg) as reader:
        frames = [frame_rgb(f, reader.info.rotation) for _, f in reader.frames()]
        spf = cfg.sample_rate / cfg.fps
        n = int(round(len(frames) * spf))
        audio = reader.audio.read(n)
        coverage = min(1.0, reader.audio.covered / max(1, n))
        return Media(
            frames=np.stack(frames),
            audio=audio,
            fps=cfg.fps,
            sample_rate=cfg.sample_rate,
            source_fps=reader.info.fps,
            source_size=(reader.info.width, reader.info.height),
            audio_coverage=coverage,
            source_vfr=reader.clock.vfr,
        )
