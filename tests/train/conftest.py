"""Tiny shards for the avf-train tests: demo talking faces at 160x160 with real speech.

Built once per session: 8 unlabelled clips for pre-training and 8 labelled clips whose
``label_name`` spellings come from different datasets of paper Table 3 (so the CEA-13 alignment is
exercised), plus DEA ``targets``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

NUM_FRAMES = 72  # 2.88 s at 25 fps: one 16x4 window (65 frames) plus a little slack
LABEL_NAMES = ["Happy", "Sadness", "Angry", "Neutral", "happiness", "Fearful", "Surprised", "Worried"]


def _clips(n: int, labelled: bool):
    import cv2

    from avf_data.demo import FPS, SAMPLE_RATE, load_speech, render_talking_face, speech_envelope
    from avf_data.shards import ClipSample

    speech = load_speech(1)
    hop = SAMPLE_RATE // FPS
    for i in range(n):
        start = (i * 9 * hop) % max(1, len(speech) - NUM_FRAMES * hop)
        audio = speech[start : start + NUM_FRAMES * hop].astype(np.float32)
        env = speech_envelope(audio, num_frames=NUM_FRAMES)
        frames = render_talking_face(env, size=(192, 192), head_height=170, seed=i, background=i % 2)
        frames = np.stack([cv2.resize(f, (160, 160), interpolation=cv2.INTER_AREA) for f in frames])
        meta = {"source": f"demo_{i}", "start": 0.0, "end": NUM_FRAMES / FPS}
        label = None
        if labelled:
            meta.update(
                label_name=LABEL_NAMES[i % len(LABEL_NAMES)],
                subject=f"s{i % 4}",
                fold=i % 2,
                targets=[float(np.sin(i)), float(np.cos(i))],
            )
            label = i % 3
        yield ClipSample(key=f"clip{i:03d}", frames=frames, audio=audio, meta=meta, label=label)


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> dict[str, str]:
    from avf_data.shards import ShardWriter

    root = tmp_path_factory.mktemp("train_shards")
    out: dict[str, str] = {}
    for name, labelled in (("unlabelled", False), ("labelled", True)):
        folder = Path(root) / name
        with ShardWriter(folder, prefix=name, max_count=4) as writer:
            for clip in _clips(8, labelled):
                writer.write(clip)
        out[name] = str(folder / "*.tar")
    return out
