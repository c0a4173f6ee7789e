"""Stage 3: silence split with librosa so that every clip holds continuous speech.

Speech intervals come from ``librosa.effects.split`` (relative to the loudest part of the
segment) plus an absolute floor so that a silent segment does not count as speech. Short
pauses are bridged, intervals are padded, too short speech is rejected and long speech is
chunked into equal pieces no longer than ``max_clip_seconds``. Every frame of the segment
ends up either in a clip or in a reject row (stage "silence"), so nothing is lost.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .base import Part, Span, Stage


@dataclass
class SilenceConfig:
    """mode: off | measure (speech recorded, nothing split or dropped) | enforce.
    top_db: librosa threshold below the segment's peak that counts as silence.
    floor_db: absolute RMS floor (dBFS); quieter audio is silence whatever top_db says.
    frame_length / hop_length: librosa analysis window and hop (samples at 16 kHz).
    min_gap_seconds: pauses shorter than this are kept inside the clip.
    pad_seconds: speech intervals are widened by this much on each side.
    min_clip_seconds / max_clip_seconds: clip length bounds; long speech is chunked.
    """

    mode: str = "enforce"
    top_db: float = 35.0
    floor_db: float = -50.0
    frame_length: int = 1024
    hop_length: int = 256
    min_gap_seconds: float = 0.4
    pad_seconds: float = 0.1
    min_clip_seconds: float = 1.0
    max_clip_seconds: float = 8.0


@dataclass
class Piece:
    start: int  # frame, relative to the segment
    end: int
    reason: str | None  # None = a speech clip to keep
    code: str | None = None


def speech_intervals(audio: np.ndarray, sample_rate: int, cfg: SilenceConfig) -> list[tuple[float, float]]:
    """Non-silent intervals in seconds."""
    import librosa

    if len(audio) < cfg.frame_length:
        return []
    rms = librosa.feature.rms(y=audio, frame_length=cfg.frame_length, hop_length=cfg.hop_length)[0]
    floor = 10 ** (cfg.floor_db / 20)
    if rms.max() < floor:
        return []
    iv = librosa.effects.split(audio, top_db=cfg.top_db, frame_length=cfg.frame_length, hop_length=cfg.hop_length)
    out = []
    for a, b in iv:
        fa, fb = a // cfg.hop_length, max(a // cfg.hop_length + 1, b // cfg.hop_length)
        if rms[fa:fb].max(initial=0.0) >= floor:
            out.append((a / sample_rate, b / sample_rate))
    return out


def split_speech(
    audio: np.ndarray, sample_rate: int, num_frames: int, fps: float, cfg: SilenceConfig | None = None
) -> list[Piece]:
    """Partition frames ``[0, num_frames)`` of a segment into speech clips and silence rejects."""
    cfg = cfg or SilenceConfig()
    iv = speech_intervals(audio, sample_rate, cfg)
    # bridge short pauses
    merged: list[list[float]] = []
    for a, b in iv:
        if merged and a - merged[-1][1] < cfg.min_gap_seconds:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    dur = num_frames / fps
    frames_iv: list[tuple[int, int]] = []
    for a, b in merged:
        a = max(0.0, a - cfg.pad_seconds)
        b = min(dur, b + cfg.pad_seconds)
        fa, fb = int(math.floor(a * fps)), int(math.ceil(b * fps))
        fa, fb = max(fa, frames_iv[-1][1] if frames_iv else 0), min(fb, num_frames)
        if fb > fa:
            frames_iv.append((fa, fb))
    pieces: list[Piece] = []
    cursor = 0
    min_f = max(1, int(round(cfg.min_clip_seconds * fps)))
    max_f = max(min_f, int(round(cfg.max_clip_seconds * fps)))
    for fa, fb in frames_iv:
        if fa > cursor:
            pieces.append(Piece(cursor, fa, f"silence ({(fa - cursor) / fps:.2f} s)", "silence.silence"))
        length = fb - fa
        if length < min_f:
            why = f"speech too short ({length / fps:.2f} s < {cfg.min_clip_seconds} s)"
            pieces.append(Piece(fa, fb, why, "silence.short"))
        else:
            n = max(1, math.ceil(length / max_f))
            edges = [fa + (k * length) // n for k in range(n + 1)]
            for s, e in itertools.pairwise(edges):
                pieces.append(Piece(s, e, None))
        cursor = fb
    if cursor < num_frames:
        text, code = ("no speech", "silence.no_speech") if not frames_iv else ("silence", "silence.silence")
        pieces.append(Piece(cursor, num_frames, f"{text} ({(num_frames - cursor) / fps:.2f} s)", code))
    return pieces


class SilenceStage(Stage):
    """Stage 3: clips hold continuous speech between min and max length; silence between them
    is a reject row. In ``measure`` mode only the speech fraction is recorded."""

    name = "silence"
    summary = "librosa.effects.split: clips hold continuous speech, min/max length"
    Config = SilenceConfig
    codes = {
        "silence.silence": "a pause between (or around) speech",
        "silence.no_speech": "a segment without any speech",
        "silence.short": "speech shorter than min_clip_seconds",
    }

    @classmethod
    def preload(cls) -> None:
        import librosa

        librosa.feature.rms  # noqa: B018 - resolve the lazy submodules before workers fork
        librosa.effects.split  # noqa: B018

    def run(self, span: Span, chunk) -> list[Part]:
        audio = chunk.audio_slice(span.start, span.end)
        pieces = split_speech(audio, chunk.sample_rate, span.length, chunk.fps, self.cfg)
        if self.mode != "enforce":
            speech = sum(p.end - p.start for p in pieces if p.reason is None)
            return [Part(span.start, span.end, meta={"speech_fraction": round(speech / max(1, span.length), 3)})]
        return [Part(span.start + p.start, span.start + p.end, p.code, p.reason) for p in pieces]
