"""A stage a user might add, in one file: its unit, its config section and its reason codes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avf_data.stages.base import Part, Stage


@dataclass
class LoudnessConfig:
    mode: str = "enforce"
    min_rms: float = 0.01


class LoudnessStage(Stage):
    name = "loudness"
    summary = "quiet clips out"
    Config = LoudnessConfig
    codes = {"loudness.quiet": "the clip's RMS is below min_rms"}

    def run(self, span, chunk):
        rms = float(np.sqrt(np.mean(chunk.audio_slice(span.start, span.end) ** 2)))
        code = "loudness.quiet" if rms < self.cfg.min_rms else None
        return [Part(span.start, span.end, code, f"rms {rms:.4f} < {self.cfg.min_rms}" if code else None)]
