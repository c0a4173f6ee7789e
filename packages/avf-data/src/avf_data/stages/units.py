"""The six curation stages as units of :mod:`avf_data.stages.base` (paper §4.1, in order).

Each unit adapts one stage module (scene, face_filter, silence, crop, sync, quality) to the
one signature ``run(span, ctx) -> parts`` and gives its outcomes stable reason codes.
``ctx`` is the pipeline's :class:`ChunkContext`: the chunk being curated and the config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..chunks import Chunk
from .base import Part, Span


@dataclass
class ChunkContext:
    """What stages see besides the span: the decoded chunk and the build's settings."""

    chunk: Chunk
    cfg: Any  # BuildConfig
    scorer: Any = None  # sync scorer, or None when unavailable
    scorer_note: str | None = None


def _clean(values: list[float]) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 4) for v in values]


class ConfiguredStage:
    """A stage whose mode and thresholds are one config section (``cfg.mode``)."""

    name = ""
    runs_when_off = False

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.mode = cfg.mode


class SceneStage(ConfiguredStage):
    """Stage 1: PySceneDetect cuts; segments too short, or whose audio ends early, out."""

    name = "scene"

    def run(self, span: Span, ctx: ChunkContext) -> list[Part]:
        from .scene import detect_cuts, split_scenes

        chunk = ctx.chunk
        frames = chunk.small[span.start : span.end]
        cuts = [span.start + c for c in detect_cuts(frames, chunk.fps, self.cfg)]
        if self.mode != "enforce":
            return [
                Part(
                    span.start,
                    span.end,
                    meta={"scene_cuts": [round((c + chunk.start_frame) / chunk.fps, 3) for c in cuts]},
                )
            ]
        kept, rejected = split_scenes(chunk.num_frames, cuts, chunk.fps, self.cfg, chunk.audio_coverage)
        parts = []
        for seg in kept:
            scene = {
                "start": round((seg.start + chunk.start_frame) / chunk.fps, 6),
                "end": round((seg.end + chunk.start_frame) / chunk.fps, 6),
            }
            parts.append(Part(seg.start, seg.end, meta={"scene": scene}))
        for seg, reason in rejected:
            code = "scene.short" if "too short" in reason else "scene.incomplete"
            parts.append(Part(seg.start, seg.end, code, reason))
        return sorted(parts, key=lambda p: p.start)


class FaceStage(ConfiguredStage):
    """Stage 2: dlib HOG on a few frames: no face, several, tiny, cut or distorted faces out."""

    name = "face"

    def run(self, span: Span, ctx: ChunkContext) -> list[Part]:
        from .face_filter import check_faces

        chunk = ctx.chunk
        analysis = _Nearest(chunk)
        fc = check_faces(analysis, span.start, span.end, self.cfg)
        # dlib saw analysis frames; its face-size rule is relative to the frame, so it holds
        scores = _clean(fc.scores)
        return [
            Part(span.start, span.end, fc.code, fc.reason, meta={"dlib_scores": scores}, row={"dlib_scores": scores})
        ]


class _Nearest:
    """Index a chunk's analysis frames by any frame number (nearest detection frame)."""

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk

    def __getitem__(self, k: int) -> np.ndarray:
        return self.chunk.nearest_analysis(k)


class SilenceStage(ConfiguredStage):
    """Stage 3: librosa split; clips hold continuous speech between min and max length."""

    name = "silence"

    def run(self, span: Span, ctx: ChunkContext) -> list[Part]:
        from .silence import split_speech

        chunk = ctx.chunk
        pieces = split_speech(
            chunk.audio_slice(span.start, span.end), chunk.sample_rate, span.length, chunk.fps, self.cfg
        )
        if self.mode != "enforce":
            speech = sum(p.end - p.start for p in pieces if p.reason is None)
            return [Part(span.start, span.end, meta={"speech_fraction": round(speech / max(1, span.length), 3)})]
        parts = []
        for p in pieces:
            code = None
            if p.reason:
                code = (
                    "silence.short"
                    if p.reason.startswith("speech too short")
                    else "silence.no_speech"
                    if p.reason.startswith("no speech")
                    else "silence.silence"
                )
            parts.append(Part(span.start + p.start, span.start + p.end, code, p.reason))
        return parts


class CropStage(ConfiguredStage):
    """Stage 4: RetinaFace track, Savitzky-Golay centre, one window per clip, cut at out_size."""

    name = "crop"
    runs_when_off = True  # later stages and the shard need a crop: off = centre square

    def run(self, span: Span, ctx: ChunkContext) -> list[Part]:
        from .crop import plan_track

        chunk = ctx.chunk
        n = span.length
        info = chunk.source
        if self.mode == "off":
            return [self._centre(span, chunk)]
        dets = {k - span.start: chunk.faces[k] for k in chunk.faces if span.start <= k < span.end}
        track = plan_track(n, dets, info.width, info.height, self.cfg)
        meta = {
            "detector": {
                "retinaface_frames": [span.start + chunk.start_frame + i for i in track.det_frames],
                "retinaface_scores": track.det_scores,
            }
        }
        if track.reason:
            if self.mode == "enforce":
                return [Part(span.start, span.end, track.code, track.reason, meta=meta)]
            part = self._centre(span, chunk)
            part.code, part.detail = track.code, track.reason
            return [part]
        assert track.windows is not None and track.face_boxes is not None
        size = self.cfg.out_size
        frames = np.empty((n, size, size, 3), np.uint8)
        for i in range(n):
            frames[i] = chunk.regions.cut(span.start + i, *track.windows[i], size, size)
        meta.update(
            {
                "boxes": _round_boxes(track.windows),
                "face_boxes": _round_boxes(track.face_boxes),
                "face_side": round(track.face_side, 1),
                "crop_outside": round(track.outside, 4),
            }
        )
        return [Part(span.start, span.end, meta=meta, data={"crop": frames, "face_boxes": track.face_boxes})]

    def _centre(self, span: Span, chunk: Chunk) -> Part:
        """A fixed centre square of the frame (no detector)."""
        info = chunk.source
        side = float(min(info.width, info.height))
        x0, y0 = (info.width - side) / 2, (info.height - side) / 2
        size = self.cfg.out_size
        frames = np.stack(
            [chunk.regions.cut(k, x0, y0, x0 + side, y0 + side, size, size) for k in range(span.start, span.end)]
        )
        box = [round(x0, 1), round(y0, 1), round(x0 + side, 1), round(y0 + side, 1)]
        boxes = np.tile(np.asarray(box, np.float64), (span.length, 1))
        return Part(
            span.start,
            span.end,
            meta={"boxes": [box] * span.length, "face_side": None},
            data={"crop": frames, "face_boxes": boxes},
        )


def _round_boxes(boxes: np.ndarray) -> list[list[float]]:
    return np.round(np.asarray(boxes, np.float64), 1).tolist()


@dataclass
class ClipView:
    """What a sync scorer sees of a clip: the training crop, the audio and, for SyncNet's own
    crop geometry, the per-frame face boxes and a way to cut any source rectangle."""

    crop_frames: np.ndarray  # (T, out, out, 3) RGB
    audio: np.ndarray  # float32 mono
    fps: float
    sample_rate: int
    face_boxes: np.ndarray  # (T, 4) source px
    chunk: Chunk
    start: int  # chunk-relative frame of crop_frames[0]

    def cut_region(self, k: int, x0: float, y0: float, x1: float, y1: float, out_w: int, out_h: int) -> np.ndarray:
        """Frame ``k``'s source rectangle at ``out_w x out_h``; grey 110 outside the picture
        (as the reference SyncNet pipeline pads)."""
        return self.chunk.regions.cut(self.start + k, x0, y0, x1, y1, out_w, out_h, fill=110)


class SyncStage:
    """Stage 5a: audio-visual sync (SyncNet v2 with weights; otherwise measured only)."""

    name = "sync"
    runs_when_off = False

    def __init__(self, cfg, scorer, enforced: bool, note: str | None = None) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.note = note
        self.mode = "off" if cfg.mode == "off" else ("enforce" if enforced else "measure")

    def run(self, span: Span, ctx: ChunkContext) -> list[Part]:
        from .sync import sync_reject_code, sync_reject_reason

        chunk = ctx.chunk
        if self.scorer is None:
            return [
                Part(span.start, span.end, meta={"sync": {"method": "none", "note": self.note}, "sync_method": "none"})
            ]
        crop = span.data["crop"]
        audio = chunk.audio_slice(span.start, span.end)
        if hasattr(self.scorer, "score_clip"):
            view = ClipView(crop, audio, chunk.fps, chunk.sample_rate, span.data["face_boxes"], chunk, span.start)
            r = self.scorer.score_clip(view)
        else:
            r = self.scorer.score(crop, audio, fps=chunk.fps, sample_rate=chunk.sample_rate)
        sj = r.to_json()
        meta = {
            "sync": sj,
            "sync_offset": sj["offset_frames"],
            "sync_confidence": sj["confidence"],
            "sync_method": r.method,
        }
        code = sync_reject_code(r, self.cfg)
        reason = sync_reject_reason(r, self.cfg) if code else None
        return [Part(span.start, span.end, code, reason, meta=meta, row={"sync": sj})]


class QualityStage(ConfiguredStage):
    """Stage 5b: blur, frozen and flat video out."""

    name = "quality"

    def run(self, span: Span, ctx: ChunkContext) -> list[Part]:
        from .quality import measure_quality, quality_reject_reason

        q = measure_quality(span.data["crop"])
        reason = quality_reject_reason(q, self.cfg)
        code = None
        if reason:
            code = (
                "quality.flat"
                if reason.startswith("flat")
                else "quality.blur"
                if reason.startswith("blurry")
                else "quality.frozen"
            )
        meta = {"blur": round(float(q.blur), 3), "motion": round(float(q.motion), 4)}
        return [Part(span.start, span.end, code, reason, meta=meta, row={"blur": meta["blur"]})]


def build_stages(cfg, scorer, sync_enforced: bool, scorer_note: str | None = None) -> list:
    """The stage units of a build config, in pipeline order."""
    if not cfg.curate:  # labelled import without detection: one centre-cropped clip per input
        off = {"mode": "off"}
        return [CropStage(dataclasses.replace(cfg.crop, **off))]
    return [
        SceneStage(cfg.scene),
        FaceStage(cfg.face),
        SilenceStage(cfg.silence),
        CropStage(cfg.crop),
        SyncStage(cfg.sync, scorer, sync_enforced, scorer_note),
        QualityStage(cfg.quality),
    ]
