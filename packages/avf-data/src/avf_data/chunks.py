"""Streaming decode of an input into bounded chunks that the curation stages work on.

Memory, not speed, is why this exists: a minute of 1080p RGB is 9 GB. One pass over the
decoded frames keeps only what later stages need, at sizes that do not grow with the source:

* ``small``: every frame at about 160 px wide, for scene detection;
* ``analysis``: every ``detect_every``-th frame at ``analysis_side`` px (long side), for dlib
  and RetinaFace, whose detections are stored in source pixels;
* ``regions``: per frame, a square *face region* around the detected face (``region_factor``
  times its size, at most ``region_size`` px). Crop windows (the 160 px training crop, the
  224 px SyncNet crop) are cut from it later, once the clip's whole face track is known.

A region needs the face at both ends of its frame run, so the few frames between two
detection frames wait (as decoded YUV pictures, no RGB copy) until the next detection. Only
the region, not the frame, is converted to RGB: at 1080p that is a tenth of the pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .media import FramesWithAudio, MediaReader, SourceInfo, frame_rgb


@dataclass
class Face:
    """A RetinaFace detection in upright source pixels."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def side(self) -> float:
        return max(self.x1 - self.x0, self.y1 - self.y0)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def box(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]


def pick_face(faces: list[Face], prev: tuple[float, float] | None) -> Face | None:
    """The tracked face: the largest, or when tracking, the one nearest the previous centre."""
    if not faces:
        return None
    if prev is None:
        return max(faces, key=lambda f: f.side)
    return min(faces, key=lambda f: (f.centre[0] - prev[0]) ** 2 + (f.centre[1] - prev[1]) ** 2)


# --------------------------------------------------------------------------- one decoded frame


def _interp(scale: float) -> int:
    return cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR


class FrameImage:
    """A decoded frame, upright, that hands out scaled rectangles without converting the
    whole picture to RGB (only yuv420p without rotation; other formats convert once)."""

    def __init__(self, frame: Any, rotation: int = 0) -> None:
        self.planes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.rgb: np.ndarray | None = None
        if rotation == 0 and frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0:
            w, h = frame.width, frame.height
            ps = frame.planes
            self.planes = (_plane(ps[0], h, w), _plane(ps[1], h // 2, w // 2), _plane(ps[2], h // 2, w // 2))
            self.width, self.height = w, h
        else:
            self.rgb = frame_rgb(frame, rotation)
            self.height, self.width = self.rgb.shape[:2]

    def _inside(self, x0: int, y0: int, x1: int, y1: int, out_w: int, out_h: int) -> np.ndarray:
        """RGB of the in-frame rectangle ``[x0, x1) x [y0, y1)`` resized to ``out_w x out_h``."""
        scale = min(out_w / max(1, x1 - x0), out_h / max(1, y1 - y0))
        if self.rgb is not None:
            return cv2.resize(self.rgb[y0:y1, x0:x1], (out_w, out_h), interpolation=_interp(scale))
        assert self.planes is not None
        yp, up, vp = self.planes
        x0e, y0e = x0 & ~1, y0 & ~1
        x1e, y1e = min(self.width, (x1 + 1) & ~1), min(self.height, (y1 + 1) & ~1)
        ow, oh = max(2, (out_w + 1) & ~1), max(2, (out_h + 1) & ~1)
        interp = _interp(scale)
        y = cv2.resize(yp[y0e:y1e, x0e:x1e], (ow, oh), interpolation=interp)
        u = cv2.resize(up[y0e // 2 : y1e // 2, x0e // 2 : x1e // 2], (ow // 2, oh // 2), interpolation=interp)
        v = cv2.resize(vp[y0e // 2 : y1e // 2, x0e // 2 : x1e // 2], (ow // 2, oh // 2), interpolation=interp)
        i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(oh * 3 // 2, ow)
        rgb = cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)
        return rgb if (ow, oh) == (out_w, out_h) else rgb[:out_h, :out_w]

    def strided(self, step: int) -> np.ndarray:
        """Every ``step``-th pixel (nearest-neighbour downscale, almost free): as good as a
        resize for frame differences, which is all scene detection looks at."""
        if self.rgb is not None:
            return np.ascontiguousarray(self.rgb[::step, ::step])
        assert self.planes is not None
        yp, up, vp = self.planes
        hs, ws = (self.height // step) // 2 * 2, (self.width // step) // 2 * 2
        y = yp[0 : hs * step : step, 0 : ws * step : step]
        u = up[0 : hs // 2 * step : step, 0 : ws // 2 * step : step]
        v = vp[0 : hs // 2 * step : step, 0 : ws // 2 * step : step]
        i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(hs * 3 // 2, ws)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)

    def scaled(self, out_w: int, out_h: int) -> np.ndarray:
        """The whole frame at ``out_w x out_h``."""
        if self.rgb is not None and (out_w, out_h) == (self.width, self.height):
            return self.rgb
        return self._inside(0, 0, self.width, self.height, out_w, out_h)


def _plane(plane: Any, h: int, w: int) -> np.ndarray:
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]


def cut_rect(
    inside,
    width: int,
    height: int,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    out_w: int,
    out_h: int,
    fill: int | None,
) -> np.ndarray:
    """Cut the rectangle ``[x0, x1) x [y0, y1)`` of a ``width x height`` picture, resized to
    ``out_w x out_h``. ``inside(ix0, iy0, ix1, iy1, w, h)`` returns an in-picture rectangle at
    ``w x h``; outside the picture the result repeats edge pixels (``fill=None``) or is
    ``fill`` grey."""
    sx, sy = out_w / max(1e-6, x1 - x0), out_h / max(1e-6, y1 - y0)
    ix0, iy0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    ix1, iy1 = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
    if ix1 <= ix0 or iy1 <= iy0:
        return np.full((out_h, out_w, 3), 110 if fill is None else fill, np.uint8)
    left = min(out_w - 1, max(0, int(round((ix0 - x0) * sx))))
    top = min(out_h - 1, max(0, int(round((iy0 - y0) * sy))))
    w = min(out_w, max(left + 1, int(round((ix1 - x0) * sx)))) - left
    h = min(out_h, max(top + 1, int(round((iy1 - y0) * sy)))) - top
    img = inside(ix0, iy0, ix1, iy1, w, h)
    if (w, h) == (out_w, out_h):
        return img
    border = cv2.BORDER_REPLICATE if fill is None else cv2.BORDER_CONSTANT
    return cv2.copyMakeBorder(
        img,
        top,
        out_h - top - h,
        left,
        out_w - left - w,
        border,
        value=(fill, fill, fill) if fill is not None else None,
    )


# --------------------------------------------------------------------------- face regions


@dataclass
class FaceRegions:
    """Per frame, the part of the picture around the face (a square of ``region_factor`` x
    face side, clipped to the picture) stored at most ``size`` px on its longer side; crop
    windows of any geometry are cut from it (:meth:`cut`)."""

    size: int
    width: int  # source picture (upright)
    height: int
    images: list[np.ndarray]  # per frame (h_k, w_k, 3) uint8
    rects: np.ndarray  # (T, 4) float: x0, y0, x1, y1 in source px (inside the picture)
    stored: np.ndarray  # (T, 2) int: w_k, h_k, the stored size in px

    def cut(
        self, k: int, x0: float, y0: float, x1: float, y1: float, out_w: int, out_h: int, fill: int | None = None
    ) -> np.ndarray:
        """Frame ``k``'s source rectangle at ``out_w x out_h``; outside the picture: edge pixels
        (``fill=None``) or ``fill`` grey. Parts outside the stored region repeat its edge."""
        rx0, ry0, rx1, ry1 = self.rects[k]
        w, h = int(self.stored[k, 0]), int(self.stored[k, 1])
        sx, sy = w / max(1e-6, rx1 - rx0), h / max(1e-6, ry1 - ry0)
        img = self.images[k]

        def from_region(a, b, c, d, ww, hh):
            return cv2.resize(img[b:d, a:c], (ww, hh), interpolation=_interp(ww / max(1, c - a)))

        def inside(ix0, iy0, ix1, iy1, ww, hh):
            # in-picture rectangle -> region pixels (edge-repeated where it leaves the region)
            return cut_rect(
                from_region, w, h, (ix0 - rx0) * sx, (iy0 - ry0) * sy, (ix1 - rx0) * sx, (iy1 - ry0) * sy, ww, hh, None
            )

        return cut_rect(inside, self.width, self.height, x0, y0, x1, y1, out_w, out_h, fill)

    def coverage(self, k: int, x0: float, y0: float, x1: float, y1: float) -> float:
        """Fraction of the in-picture part of a rectangle that the stored region holds."""
        rx0, ry0, rx1, ry1 = self.rects[k]
        ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(self.width, x1), min(self.height, y1)
        area = max(0.0, ix1 - ix0) * max(0.0, iy1 - iy0)
        if area <= 0:
            return 1.0
        cx0, cy0, cx1, cy1 = max(ix0, rx0), max(iy0, ry0), min(ix1, rx1), min(iy1, ry1)
        return max(0.0, cx1 - cx0) * max(0.0, cy1 - cy0) / area


# --------------------------------------------------------------------------- chunks


@dataclass
class Chunk(FramesWithAudio):
    """A stretch of an input ready for the stages (frame indices are chunk-relative)."""

    start_frame: int  # index of frame 0 in the whole input
    fps: float
    sample_rate: int
    audio: np.ndarray  # (T / fps * sample_rate,) float32 mono
    audio_coverage: float  # fraction of the chunk that the audio track covered
    small: np.ndarray  # (T, h, w, 3) RGB, ~160 px wide (scene detection, thumbnails)
    analysis: dict[int, np.ndarray]  # detection frames -> RGB at analysis size
    analysis_scale: float  # analysis px per source px
    faces: dict[int, list[Face]]  # detection frames -> RetinaFace faces (source px)
    regions: FaceRegions
    source: SourceInfo
    source_vfr: bool = False

    @property
    def num_frames(self) -> int:
        return int(len(self.small))

    def time_of(self, k: int, digits: int = 6) -> float:
        """Seconds into the input of chunk frame ``k``."""
        return round((k + self.start_frame) / self.fps, digits)

    def nearest_analysis(self, k: int) -> np.ndarray:
        """The analysis frame nearest to frame ``k`` (dlib samples, thumbnails)."""
        best = min(self.analysis, key=lambda i: abs(i - k))
        return self.analysis[best]


@dataclass
class ChunkPlan:
    """What the chunk builder keeps per frame (from the build config)."""

    chunk_frames: int
    detect_every: int = 5
    analysis_side: int = 480
    detect_width: int = 320
    score_threshold: float = 0.8
    small_width: int = 160
    region_size: int = 320
    region_factor: float = 2.6
    detect: bool = True  # False (no curation): a fixed centre square, no detector


@dataclass
class _Builder:
    """The chunk being collected; frame indices are relative to ``start``."""

    start: int
    small: list[np.ndarray] = field(default_factory=list)
    analysis: dict[int, np.ndarray] = field(default_factory=dict)
    faces: dict[int, list[Face]] = field(default_factory=dict)
    images: list[np.ndarray] = field(default_factory=list)
    rects: list[list[float]] = field(default_factory=list)
    stored: list[list[int]] = field(default_factory=list)


class _ChunkStream:
    """The state of one decode pass of :func:`iter_chunks`: the chunk being built, the frames
    waiting for the next detection (their regions need the face at both ends of the run) and
    the tracked face. An object, so that the generator stays a short per-frame loop."""

    def __init__(self, reader: MediaReader, plan: ChunkPlan) -> None:
        self.reader, self.plan, self.info = reader, plan, reader.info
        self.fps, self.sr = reader.cfg.fps, reader.cfg.sample_rate
        self.spf = self.sr / self.fps
        self.every = max(1, plan.detect_every)
        self.size = max(self.every, plan.chunk_frames - plan.chunk_frames % self.every)
        self.detector = _Detector(plan)
        self.cur: _Builder | None = None
        self.pending: list[tuple[int, FrameImage]] = []
        self.last_face: Face | None = None  # the tracked face at the last detection frame
        self.prev_centre: tuple[float, float] | None = None
        self.aw = self.ah = self.step = 0
        self.a_scale = 0.0  # analysis px per source px

    def _begin(self, k: int, img: FrameImage) -> _Builder:
        """The first frame fixes the analysis size and the thumbnail stride for the whole pass."""
        w, h = img.width, img.height
        a = min(1.0, self.plan.analysis_side / max(w, h))
        self.aw, self.ah = max(2, int(round(w * a / 2)) * 2), max(2, int(round(h * a / 2)) * 2)
        self.step = max(1, w // self.plan.small_width)
        self.a_scale = self.aw / w
        return _Builder(start=k)

    def push(self, k: int, img: FrameImage) -> Chunk | None:
        """Take decoded frame ``k``; returns the chunk that it closes, if any. Frames between
        detection frames only wait (no RGB copy) until the next detection places their regions."""
        if self.cur is None:
            self.cur = self._begin(k, img)
        cur = self.cur
        small = img.strided(self.step)
        if k % self.every:
            cur.small.append(small)
            self.pending.append((k, img))
            return None
        analysis = img.scaled(self.aw, self.ah)
        faces = self.detector(analysis, self.a_scale) if self.plan.detect else []
        face = pick_face(faces, self.prev_centre)
        self._flush(cur, face)  # the frames since the last detection end at this face
        done = None
        if k - cur.start >= self.size:
            done = self._finish(cur)
            self.cur = cur = _Builder(start=k)
        cur.analysis[k - cur.start] = analysis
        cur.faces[k - cur.start] = faces
        if face is not None:
            self.last_face, self.prev_centre = face, face.centre
        cur.small.append(small)
        self._store_region(cur, k, img, self._square(self.last_face, self.last_face))
        return done

    def close(self) -> Chunk | None:
        """The last chunk at the end of the input; its waiting frames keep the last face."""
        if self.cur is None:
            return None
        self._flush(self.cur, self.last_face)
        return self._finish(self.cur)

    def _flush(self, cur: _Builder, face: Face | None) -> None:
        """Store the regions of the waiting frames, spanning the last tracked face and ``face``."""
        sq = self._square(self.last_face, face)
        for k, image in self.pending:
            self._store_region(cur, k, image, sq)
        self.pending.clear()

    def _square(self, a: Face | None, b: Face | None) -> tuple[float, float, float]:
        """The region square ``(x0, y0, side)`` that holds faces ``a`` and ``b`` with margin."""
        info = self.info
        if not self.plan.detect:
            side = float(min(info.width, info.height))
            return (info.width - side) / 2, (info.height - side) / 2, side
        faces = [f for f in (a, b) if f is not None]
        if not faces:  # no face known: the whole picture, so that a crop is still possible
            side = float(max(info.width, info.height))
            return (info.width - side) / 2, (info.height - side) / 2, side
        x0, y0 = min(f.x0 for f in faces), min(f.y0 for f in faces)
        x1, y1 = max(f.x1 for f in faces), max(f.y1 for f in faces)
        biggest = max(f.side for f in faces)
        side = self.plan.region_factor * biggest + max(x1 - x0, y1 - y0) - biggest
        return (x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2, side

    def _store_region(self, b: _Builder, k: int, image: FrameImage, sq: tuple[float, float, float]) -> None:
        """Keep frame ``k``'s part inside ``sq`` (clipped to the picture) as RGB at about
        ``region_size``: crops are cut from it later, so the whole frame is never converted."""
        info = self.info
        x0, y0, side = sq
        x0, y0 = max(0, int(x0) & ~1), max(0, int(y0) & ~1)  # even: chroma planes are half size
        x1, y1 = min(float(info.width), sq[0] + side), min(float(info.height), sq[1] + side)
        if x1 - x0 < 4 or y1 - y0 < 4:  # the face left the picture: keep the whole picture
            x0, y0, x1, y1 = 0, 0, float(info.width), float(info.height)
        # an integer downscale factor and even sizes: OpenCV's area resize is several times
        # faster for those; the stored side stays within 2/3..4/3 of region_size
        f = max(1, int(round(max(x1 - x0, y1 - y0) / self.plan.region_size)))
        w, h = max(2, int((x1 - x0) // f) & ~1), max(2, int((y1 - y0) // f) & ~1)
        x1, y1 = x0 + w * f, y0 + h * f
        assert k - b.start == len(b.images)
        b.images.append(cut_rect(image._inside, info.width, info.height, x0, y0, x1, y1, w, h, None))
        b.rects.append([x0, y0, x1, y1])
        b.stored.append([w, h])

    def _finish(self, b: _Builder) -> Chunk:
        """The chunk of builder ``b``; its audio is read now, so audio streams along with video."""
        reader = self.reader
        before = reader.audio.covered
        a0, a1 = int(round(b.start * self.spf)), int(round((b.start + len(b.small)) * self.spf))
        audio = reader.audio.read(a1 - a0)
        n = len(b.small)
        regions = FaceRegions(
            size=self.plan.region_size,
            width=self.info.width,
            height=self.info.height,
            images=b.images,
            rects=np.asarray(b.rects, np.float64).reshape(n, 4),
            stored=np.asarray(b.stored, np.int64).reshape(n, 2),
        )
        cov = min(1.0, (reader.audio.covered - before) / max(1, len(audio)))
        return Chunk(
            start_frame=b.start,
            fps=self.fps,
            sample_rate=self.sr,
            audio=audio,
            audio_coverage=cov,
            small=np.stack(b.small),
            analysis=b.analysis,
            analysis_scale=self.a_scale,
            faces=b.faces,
            regions=regions,
            source=self.info,
            source_vfr=reader.clock.vfr,
        )


def iter_chunks(reader: MediaReader, plan: ChunkPlan) -> Iterator[Chunk]:
    """Decode ``reader`` once and yield consecutive chunks of about ``plan.chunk_frames`` frames
    (a multiple of ``detect_every``, so every chunk starts on a detection frame)."""
    stream = _ChunkStream(reader, plan)
    for k, frame in reader.frames():
        chunk = stream.push(k, FrameImage(frame, reader.info.rotation))
        if chunk is not None:
            yield chunk
    last = stream.close()
    if last is not None:
        yield last


class _Detector:
    """RetinaFace on analysis frames, at the smallest width that still sees the tracked face
    well: once a face is found, the next detection runs where that face is about
    ``FACE_PX`` px (RetinaFace's cost grows with the pixel count, and talking heads are big),
    falling back to ``detect_width`` whenever nothing is found. A second face large enough
    to matter (``crop.second_face_ratio`` of the main one) is still tens of pixels there.
    At 480 px a detection costs ~12 ms, at 160 px ~2.5 ms (one core)."""

    FACE_PX = 56  # RetinaFace's smallest anchors are 16 px; a 0.6x second face is still ~34 px
    MIN_WIDTH = 96

    def __init__(self, plan: ChunkPlan) -> None:
        self.plan = plan
        self.width = plan.detect_width

    def _run(self, analysis: np.ndarray, width: int, a_scale: float) -> list[Face]:
        from .stages.retinaface import detect_faces

        h, w = analysis.shape[:2]
        s = 1.0
        img = analysis
        if width and w > width:
            s = width / w
            img = cv2.resize(analysis, (width, max(2, int(round(h * s)))), interpolation=cv2.INTER_AREA)
        k = 1.0 / (s * a_scale)
        return [
            Face(f.x * k, f.y * k, (f.x + f.width) * k, (f.y + f.height) * k, float(f.score))
            for f in detect_faces([img], self.plan.score_threshold)[0]
        ]

    def __call__(self, analysis: np.ndarray, a_scale: float) -> list[Face]:
        full = self.plan.detect_width or analysis.shape[1]
        faces = self._run(analysis, self.width, a_scale)
        if not faces and self.width < full:
            faces = self._run(analysis, full, a_scale)
        if faces:
            side = max(f.side for f in faces) * a_scale  # in analysis px
            want = int(analysis.shape[1] * self.FACE_PX / max(side, 1.0))
            self.width = max(self.MIN_WIDTH, min(full, want))
        else:
            self.width = full
        return faces
