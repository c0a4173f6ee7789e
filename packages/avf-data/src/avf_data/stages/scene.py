"""Stage 1: scene cuts with PySceneDetect, then removal of short or incomplete segments.

Frames are fed to the PySceneDetect detector straight from the already-decoded array (no
second decode), downscaled to ``analysis_width`` which is how PySceneDetect itself speeds up
detection.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .base import Part, Span, Stage


@dataclass
class SceneConfig:
    """mode: off (no cuts) | measure (cuts recorded, nothing split or dropped) | enforce.
    detector: "adaptive" (AdaptiveDetector, default) or "content" (ContentDetector).
    adaptive_threshold / min_content_val / window_width: AdaptiveDetector parameters.
    content_threshold: ContentDetector threshold.
    min_scene_frames: PySceneDetect's minimum distance between two cuts (frames).
    min_segment_seconds: segments shorter than this are rejected ("too short").
    analysis_width: frames are subsampled to about this width for detection (0 = full size).
    min_audio_coverage: a segment whose audio track ends early (covers less than this
        fraction) is rejected as "incomplete".
    """

    mode: str = "enforce"
    detector: str = "adaptive"
    adaptive_threshold: float = 3.0
    min_content_val: float = 15.0
    window_width: int = 2
    content_threshold: float = 27.0
    min_scene_frames: int = 15
    min_segment_seconds: float = 1.0
    analysis_width: int = 160
    min_audio_coverage: float = 0.9


def _make_detector(cfg: SceneConfig):
    from scenedetect import AdaptiveDetector, ContentDetector

    if cfg.detector == "adaptive":
        return AdaptiveDetector(
            adaptive_threshold=cfg.adaptive_threshold,
            min_scene_len=cfg.min_scene_frames,
            window_width=cfg.window_width,
            min_content_val=cfg.min_content_val,
        )
    if cfg.detector == "content":
        return ContentDetector(threshold=cfg.content_threshold, min_scene_len=cfg.min_scene_frames)
    raise ValueError(f"scene.detector must be 'adaptive' or 'content', not {cfg.detector!r}")


def detect_cuts(frames: np.ndarray, fps: float, cfg: SceneConfig | None = None) -> list[int]:
    """Frame indices where a new shot starts (excluding 0), detected on RGB ``frames``."""
    from scenedetect import FrameTimecode

    cfg = cfg or SceneConfig()
    det = _make_detector(cfg)
    n = len(frames)
    if n < 2:
        return []
    h, w = frames.shape[1:3]
    step = max(1, w // cfg.analysis_width) if cfg.analysis_width else 1
    cuts: list[int] = []
    tc = None
    for i in range(n):
        # strided subsampling is as good as a resize for frame differences, and ~free
        img = np.ascontiguousarray(frames[i, ::step, ::step, ::-1])  # detectors expect BGR
        tc = FrameTimecode(i, fps=fps)
        for c in det.process_frame(tc, img):
            cuts.append(int(c.frame_num))
    for c in det.post_process(tc):
        cuts.append(int(c.frame_num))
    return sorted({c for c in cuts if 0 < c < n})


@dataclass
class Segment:
    start: int  # first frame
    end: int  # one past the last frame

    @property
    def length(self) -> int:
        return self.end - self.start


def split_scenes(
    num_frames: int, cuts: list[int], fps: float, cfg: SceneConfig, audio_coverage: float = 1.0
) -> tuple[list[Segment], list[tuple[Segment, str, str]]]:
    """Cut ``[0, num_frames)`` at ``cuts``; returns kept segments and (segment, code, reason) rejects."""
    bounds = [0, *cuts, num_frames]
    kept: list[Segment] = []
    rejected: list[tuple[Segment, str, str]] = []
    min_frames = int(round(cfg.min_segment_seconds * fps))
    covered_until = int(np.floor(audio_coverage * num_frames + 1e-6))
    for a, b in itertools.pairwise(bounds):
        if b <= a:
            continue
        seg = Segment(a, b)
        if seg.length < min_frames:
            why = f"scene segment too short ({seg.length / fps:.2f} s < {cfg.min_segment_seconds} s)"
            rejected.append((seg, "scene.short", why))
            continue
        audio_part = max(0, min(b, covered_until) - a) / seg.length
        if audio_part < cfg.min_audio_coverage:
            rejected.append((seg, "scene.incomplete", f"incomplete: audio covers {audio_part:.0%} of the segment"))
            continue
        kept.append(seg)
    return kept, rejected


class SceneStage(Stage):
    """Stage 1: shot cuts; a segment too short to hold a clip, or whose audio ends early, out.
    In ``measure`` mode the cuts are only recorded (``scene_cuts``)."""

    name = "scene"
    summary = "PySceneDetect AdaptiveDetector cuts; short or incomplete segments dropped"
    Config = SceneConfig
    codes = {
        "scene.short": "a segment between two cuts is shorter than min_segment_seconds",
        "scene.incomplete": "the audio track ends before the segment does",
    }

    def run(self, span: Span, chunk) -> list[Part]:
        cuts = [span.start + c for c in detect_cuts(chunk.small[span.start : span.end], chunk.fps, self.cfg)]
        if self.mode != "enforce":
            return [Part(span.start, span.end, meta={"scene_cuts": [chunk.time_of(c, 3) for c in cuts]})]
        kept, rejected = split_scenes(chunk.num_frames, cuts, chunk.fps, self.cfg, chunk.audio_coverage)
        parts = [
            Part(seg.start, seg.end, meta={"scene": {"start": chunk.time_of(seg.start), "end": chunk.time_of(seg.end)}})
            for seg in kept
        ]
        parts += [Part(seg.start, seg.end, code, reason) for seg, code, reason in rejected]
        return sorted(parts, key=lambda p: p.start)
