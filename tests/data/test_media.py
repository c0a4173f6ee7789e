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


def test_audio_only_file_has_no_video_stream(tmp_path, mux_audio):
    import av

    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        mux_audio(c, s, _tone(1.0), 16000)
    with pytest.raises(MediaError, match="no video stream"):
        load_media(path)


def _write_vfr(path, frames_and_ms, audio, mux_audio, sr=16000):
    """An mkv whose frames last the given milliseconds (jittered: variable frame rate)."""
    from fractions import Fraction

    import av

    h, w = frames_and_ms[0][0].shape[:2]
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.time_base = Fraction(1, 1000)
        vs.codec_context.time_base = Fraction(1, 1000)
        vs.options = {"bf": "0"}
        a_s = c.add_stream("pcm_s16le", rate=sr)  # no AAC priming delay: the test measures alignment
        a_s.layout = "mono"
        t = 0
        for img, ms in frames_and_ms:
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            fr.pts = t
            fr.time_base = Fraction(1, 1000)
            t += ms
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        mux_audio(c, a_s, audio, sr)
    return path


def test_variable_frame_rate_becomes_25fps_with_aligned_audio(tmp_path, canvas, mux_audio):
    """Phone-style VFR (frame durations jittered 15-65 ms): resampled to 25 fps by nearest
    timestamp, flagged as VFR, and a flash in the picture lines up with a click in the audio
    to within one frame."""
    rng = np.random.default_rng(0)
    img = canvas((160, 96), head=60)
    white = np.full_like(img, 255)
    t, frames, flash_ms = 0, [], None
    while t < 4000:
        ms = int(rng.integers(15, 66))
        lit = 2000 <= t < 2060
        if lit and flash_ms is None:
            flash_ms = t
        frames.append((white if lit else img, ms))
        t += ms
    sr = 16000
    audio = 0.01 * rng.standard_normal(int(t / 1000 * sr) + sr).astype(np.float32)
    audio[int(flash_ms / 1000 * sr)] = 0.9  # the click, at the first lit frame
    m = load_media(_write_vfr(tmp_path / "vfr.mkv", frames, audio, mux_audio, sr))
    assert m.fps == 25 and m.source_vfr
    assert abs(m.num_frames - t / 40) <= 2
    flash = int(np.argmax(m.frames.reshape(m.num_frames, -1).mean(axis=1)))
    click = int(np.argmax(np.abs(m.audio))) / sr * 25
    assert abs(flash - flash_ms / 40) <= 1 and abs(flash - click) <= 1, (flash, click)


def test_constant_rate_is_not_flagged_vfr(tmp_path, canvas):
    frames = np.repeat(canvas((160, 96), head=60)[None], 30, axis=0)
    path = write_av(tmp_path / "cfr.mp4", frames, _tone(1.2), fps=25)
    assert not load_media(path).source_vfr


def test_stereo_is_downmixed_as_the_mean_of_the_channels(tmp_path, canvas, mux_audio):
    """(L + R) / 2, as ffmpeg -ac 1 (FFmpeg's own default downmix is (L + R) / sqrt(2))."""
    import av

    path = tmp_path / "stereo.mp4"
    img = canvas((160, 96), head=60)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 160, 96, "yuv420p"
        a_s = c.add_stream("pcm_s16le" if False else "aac", rate=16000)
        a_s.layout = "stereo"
        for _ in range(25):
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        left = _tone(1.2) * 0 + 0.4 * np.sin(2 * np.pi * 300 * np.arange(int(1.2 * 16000)) / 16000)
        mux_audio(c, a_s, np.stack([left, left]), 16000)
    m = load_media(path)
    rms = float(np.sqrt(np.mean(m.audio[4000:12000] ** 2)))
    assert abs(rms - 0.4 / np.sqrt(2)) < 0.02  # same level as each channel, not sqrt(2) louder


def test_display_rotation_is_applied(tmp_path, canvas, mux_audio):
    """A phone clip stored sideways with a 90-degree display matrix is decoded upright."""
    import av

    upright = canvas((96, 160), head=60)  # portrait, as displayed
    upright[:10] = (255, 0, 0)  # a red band at the top, to check the orientation
    stored = np.ascontiguousarray(np.rot90(upright, -1))  # sideways, as a phone stores it
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = stored.shape[1], stored.shape[0], "yuv420p"
        vs.set_display_rotation(90)  # counter-clockwise, as players apply it
        a_s = c.add_stream("aac", rate=16000)
        a_s.layout = "mono"
        for _ in range(25):
            for p in vs.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        mux_audio(c, a_s, _tone(1.0), 16000)
    m = load_media(path)
    assert m.frames.shape[1:] == (160, 96, 3) and m.source_size == (96, 160)
    top, bottom = m.frames[0, :8].mean(axis=(0, 1)), m.frames[0, -8:].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 80 and not (bottom[0] > 200 and bottom[1] < 80)
