"""Media IO: decode once to 25 fps / 16 kHz mono, and clear reasons for bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from avf_data.demo import write_av
from avf_data.media import MediaConfig, MediaError, load_media


def _tone(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_resamples_30fps_and_48k_to_25fps_16k(tmp_path, canvas):
    frames = np.repeat(canvas((320, 180), head=120)[None], 60, axis=0)  # 2 s at 30 fps
    path = write_av(tmp_path / "a.mp4", frames, _tone(2.0, 48000), fps=30, sample_rate=48000)
    m = load_media(path)
    assert m.fps == 25 and m.sample_rate == 16000
    assert m.frames.shape == (50, 180, 320, 3)
    assert len(m.audio) == 32000
    assert abs(m.source_fps - 30) < 0.01
    # the tone survives resampling
    spec = np.abs(np.fft.rfft(m.audio[4000:20000]))
    assert abs(np.argmax(spec) * 16000 / 16000 - 220) < 3


def test_bad_inputs_have_clear_reasons(tmp_path, canvas):
    frames = np.repeat(canvas((160, 96), head=60)[None], 10, axis=0)
    no_audio = write_av(tmp_path / "no_audio.mp4", frames, None)
    with pytest.raises(MediaError, match="no audio track"):
        load_media(no_audio)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="zero length"):
        load_media(empty)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(3000))
    with pytest.raises(MediaError, match="corrupt"):
        load_media(corrupt)
    with pytest.raises(MediaError, match="does not exist"):
        load_media(tmp_path / "missing.mp4")
    ok = write_av(tmp_path / "ok.mp4", frames, _tone(0.4))
    with pytest.raises(MediaError, match="huge resolution"):
        load_media(ok, MediaConfig(max_pixels=100 * 100))


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        a = _tone(1.0).reshape(1, -1)
        for i in range(0, a.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(a[:, i:i + 1024]), format="fltp", layout="mono")
            fr.sample_rate = 16000
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(MediaError, match="no video stream"):
        load_media(path)


def test_variable_frame_rate_is_rejected(tmp_path, canvas):
    import av
    from fractions import Fraction

    path = tmp_path / "vfr.mkv"
    img = canvas((160, 96), head=60)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 160, 96, "yuv420p"
        vs.time_base = Fraction(1, 1000)
        vs.codec_context.time_base = Fraction(1, 1000)
        vs.options = {"bf": "0"}
        a_s = c.add_stream("aac", rate=16000)
        a_s.layout = "mono"
        t = 0
        for i in range(40):
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            fr.pts = t
            fr.time_base = Fraction(1, 1000)
            t += 20 if i % 2 else 100  # alternating 20 ms / 100 ms frames
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        a = _tone(2.4).reshape(1, -1)
        for i in range(0, a.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(a[:, i:i + 1024]), format="fltp", layout="mono")
            af.sample_rate = 16000
            for p in a_s.encode(af):
                c.mux(p)
        for p in a_s.encode():
            c.mux(p)
    m = None
    with pytest.raises(MediaError, match="variable frame rate"):
        m = load_media(path)
    assert m is None
