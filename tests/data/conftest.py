"""Shared fixtures for the avf-data tests: demo inputs and one demo build, made once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory) -> dict[str, Path]:
    from avf_data.demo import make_demo_inputs

    return make_demo_inputs(tmp_path_factory.mktemp("demo-inputs"))


@pytest.fixture(scope="session")
def demo_media(demo_inputs):
    """Decoded demo videos (lazily, each once)."""
    from avf_data.media import load_media

    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_media(demo_inputs[name])
        return cache[name]

    return get


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def demo_build(demo_inputs, tmp_path_factory):
    """The whole demo set curated once with the local engine (2 workers)."""
    from avf_data.build import build

    out = tmp_path_factory.mktemp("demo-out")
    stats = build([str(p) for p in demo_inputs.values()], out, workers=2, progress=False)
    return {
        "out": out,
        "stats": stats,
        "manifest": read_jsonl(out / "manifest.jsonl"),
        "rejects": read_jsonl(out / "rejects.jsonl"),
        "inputs": demo_inputs,
    }


@pytest.fixture(scope="session")
def canvas():
    """``canvas(size=(640, 360), head=220, centre=None, faces=1)``: a still astronaut frame."""
    return astronaut_canvas


def astronaut_canvas(size=(640, 360), head=220, centre=None, faces=1) -> np.ndarray:
    """A still frame with ``faces`` astronaut heads (for unit tests that need no video)."""
    from avf_data.demo import _background, _draw_head

    w, h = size
    canvas = _background(0, w, h, 0).copy()
    centre = centre or (w / 2, h / 2)
    for f in range(faces):
        offset = (f - (faces - 1) / 2) * w * 0.42
        _draw_head(canvas, centre[0] + offset, centre[1], head, 0.0)
    return canvas


@pytest.fixture(scope="session")
def mux_audio():
    """``mux_audio(container, stream, audio, sample_rate)``: encode float audio in [-1, 1]
    (``(n,)`` mono or ``(channels, n)``) into ``stream`` and flush it (test files that need a
    container layout ``avf_data.demo.write_av`` does not make: VFR, rotation, stereo, PCM)."""
    return encode_audio


def encode_audio(container, stream, audio: np.ndarray, sample_rate: int) -> None:
    import av

    a = np.atleast_2d(np.asarray(audio, np.float32))
    pcm = stream.codec_context.name.startswith("pcm_s16")
    layout = "mono" if a.shape[0] == 1 else "stereo"
    for i in range(0, a.shape[1], 1024):
        piece = a[:, i : i + 1024]
        if pcm:
            piece = (np.clip(piece, -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="s16" if pcm else "fltp", layout=layout)
        frame.sample_rate = sample_rate
        for p in stream.encode(frame):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)
