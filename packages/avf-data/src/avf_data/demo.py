"""Built-in demo inputs: short talking-face videos made from a real photo and real speech.

Nothing here downloads anything. The face is scikit-image's ``astronaut()`` photo (Eileen
Collins); the speech is two short espeak-ng recordings shipped in ``avf_data/assets``. The
mouth opens with the loudness of the speech, so a sync scorer sees real audio-visual
correlation, and the head drifts a little so the clip is not a frozen frame.

Each demo file exercises one branch of the curation pipeline:

=================  ===========================================================
``single_face``    one talking face, ~8 s of speech: accepted
``scene_cut``      two shots with a hard cut, a talking face in each: 2 segments
``two_faces``      two faces in frame: rejected by the face filter
``no_face``        moving background only: rejected by the face filter
``long_silence``   speech, 3 s silence, speech: split into two clips
``shifted_audio``  audio delayed by 0.5 s against the mouth: rejected by sync
``corrupt``        random bytes named ``.mp4``: rejected as unreadable
=================  ===========================================================
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

FPS = 25
SAMPLE_RATE = 16_000
FRAME_SIZE = (640, 360)  # width, height: the benchmark resolution of the issue
_AAC_PRIMING = 1024  # samples FFmpeg's AAC encoder adds in front of the first frame

# Head box in astronaut() (512x512): forehead to chin, without the flag patch lower down,
# which dlib also reports as a face.
_HEAD_BOX = (130, 10, 320, 250)  # x0, y0, x1, y1
_MOUTH_CENTRE = (223 - 130, 145 - 10)  # in head-crop coordinates (lips, below the RetinaFace mouth landmarks)


@lru_cache(maxsize=1)
def _head() -> np.ndarray:
    from skimage import data

    x0, y0, x1, y1 = _HEAD_BOX
    return np.ascontiguousarray(data.astronaut()[y0:y1, x0:x1])


def load_speech(index: int = 1) -> np.ndarray:
    """Load one of the shipped espeak-ng speech recordings as float32 16 kHz mono."""
    import soundfile as sf

    path = resources.files("avf_data") / "assets" / f"speech_{index}.flac"
    with resources.as_file(path) as real:
        audio, sr = sf.read(real, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path} is {sr} Hz, expected {SAMPLE_RATE}")
    return audio.mean(axis=1)


def speech_envelope(
    audio: np.ndarray, fps: float = FPS, sample_rate: int = SAMPLE_RATE, num_frames: int | None = None
) -> np.ndarray:
    """Loudness per video frame in [0, 1]: RMS over each frame's samples, robustly scaled."""
    hop = sample_rate / fps
    n = num_frames if num_frames is not None else int(len(audio) / hop)
    env = np.zeros(n, dtype=np.float32)
    for i in range(n):
        seg = audio[int(i * hop) : int((i + 1) * hop)]
        env[i] = float(np.sqrt(np.mean(seg**2))) if len(seg) else 0.0
    scale = np.percentile(env, 95) if np.any(env > 0) else 1.0
    env = np.clip(env / max(scale, 1e-6), 0.0, 1.0)
    env[env < 0.08] = 0.0  # silence keeps the mouth shut
    return env


def _background(kind: int, width: int, height: int, t: int) -> np.ndarray:
    """A softly textured, slowly moving background (no faces in it)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = 0.03 * t
    if kind == 0:
        r = 90 + 40 * np.sin(xx / 70 + phase)
        g = 110 + 30 * np.cos(yy / 50 - phase)
        b = 140 + 25 * np.sin((xx + yy) / 90)
    else:
        r = 170 + 30 * np.cos(yy / 40 + phase)
        g = 140 + 35 * np.sin(xx / 60)
        b = 80 + 30 * np.cos((xx - yy) / 80 - phase)
    return np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)


def _draw_head(canvas: np.ndarray, cx: float, cy: float, height: int, mouth_open: float) -> None:
    """Paste the astronaut's head centred at (cx, cy), ``height`` px tall, mouth opened 0..1."""
    import cv2

    head = _head().copy()
    mx, my = _MOUTH_CENTRE
    # Mouth: a dark ellipse whose height follows the speech envelope, lips kept around it.
    open_px = int(round(2 + 14 * mouth_open))
    cv2.ellipse(head, (mx, my), (17, max(2, open_px // 2 + 1)), 0, 0, 360, (150, 60, 60), -1)
    if mouth_open > 0.05:
        cv2.ellipse(head, (mx, my), (14, max(1, open_px // 2)), 0, 0, 360, (35, 10, 15), -1)
    scale = height / head.shape[0]
    head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = head.shape[:2]
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    H, W = canvas.shape[:2]
    sx0, sy0, sx1, sy1 = max(0, -x0), max(0, -y0), min(w, W - x0), min(h, H - y0)
    if sx1 > sx0 and sy1 > sy0:
        canvas[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] = head[sy0:sy1, sx0:sx1]


def render_talking_face(
    mouth: np.ndarray,
    faces: int = 1,
    background: int = 0,
    size: tuple[int, int] = FRAME_SIZE,
    head_height: int = 230,
    centre: tuple[float, float] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Render frames (T, H, W, 3) uint8 of ``faces`` heads whose mouths follow ``mouth``.

    ``mouth`` is the per-frame opening in [0, 1] (see :func:`speech_envelope`); ``faces=0``
    renders the background alone. Heads drift on slow sinusoids so the video is never static.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, size=(max(faces, 1), 2))
    if centre is None:
        centre = (width / 2, height / 2)
    frames = np.empty((len(mouth), height, width, 3), dtype=np.uint8)
    for t, m in enumerate(mouth):
        canvas = _background(background, width, height, t)
        for f in range(faces):
            offset = (f - (faces - 1) / 2) * width * 0.42
            cx = centre[0] + offset + 6 * np.sin(0.11 * t + phases[f, 0])
            cy = centre[1] + 4 * np.sin(0.07 * t + phases[f, 1])
            _draw_head(canvas, cx, cy, head_height, float(m))
        frames[t] = canvas
    return frames


def write_av(
    path: str | Path, frames: np.ndarray, audio: np.ndarray | None, fps: float = FPS, sample_rate: int = SAMPLE_RATE
) -> Path:
    """Write an H.264 mp4 with an AAC mono track (no audio track when ``audio`` is None)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        vstream.options = {"crf": "20", "preset": "veryfast"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        for image in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            # The AAC encoder prepends 1024 priming samples. Without an edit list (PyAV's muxing
            # writes none) decoders return them, delaying the speech by 64 ms against the
            # mouth; dropping as many samples up front keeps the demo truly in sync.
            pcm = np.clip(np.asarray(audio, dtype=np.float32), -1, 1).reshape(1, -1)[:, _AAC_PRIMING:]
            chunk = 1024
            for start in range(0, pcm.shape[1], chunk):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(pcm[:, start : start + chunk]), format="fltp", layout="mono"
                )
                frame.sample_rate = sample_rate
                for packet in astream.encode(frame):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path


def _talking_clip(audio: np.ndarray, **render: object) -> tuple[np.ndarray, np.ndarray]:
    n = int(len(audio) / SAMPLE_RATE * FPS)
    audio = audio[: int(n * SAMPLE_RATE / FPS)]
    return render_talking_face(speech_envelope(audio, num_frames=n), **render), audio


def _pad(audio: np.ndarray, before: float = 0.3, after: float = 0.3) -> np.ndarray:
    return np.concatenate(
        [np.zeros(int(before * SAMPLE_RATE), np.float32), audio, np.zeros(int(after * SAMPLE_RATE), np.float32)]
    )


def make_demo_inputs(folder: str | Path) -> dict[str, Path]:
    """Write the demo videos into ``folder`` (skipping ones already there) and return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s1, s2 = load_speech(1), load_speech(2)
    sec = SAMPLE_RATE
    out: dict[str, Path] = {}

    def emit(name: str, build) -> None:
        path = folder / f"{name}.mp4"
        if not path.exists():
            tmp = path.with_name(f".{name}.tmp.mp4")
            frames, audio = build()
            write_av(tmp, frames, audio)
            tmp.replace(path)
        out[name] = path

    emit("single_face", lambda: _talking_clip(_pad(s1), seed=1))

    def scene_cut():
        a_frames, a_audio = _talking_clip(
            _pad(s1[: 4 * sec], 0.2, 0.0), background=0, centre=(220, 180), head_height=220, seed=2
        )
        b_frames, b_audio = _talking_clip(
            _pad(s2[: 4 * sec], 0.0, 0.2), background=1, centre=(420, 190), head_height=260, seed=3
        )
        return np.concatenate([a_frames, b_frames]), np.concatenate([a_audio, b_audio])

    emit("scene_cut", scene_cut)
    emit("two_faces", lambda: _talking_clip(_pad(s2[: 4 * sec]), faces=2, head_height=200, seed=4))
    emit("no_face", lambda: _talking_clip(_pad(s1[: 4 * sec]), faces=0, seed=5))
    emit(
        "long_silence",
        lambda: _talking_clip(
            np.concatenate(
                [_pad(s2[: 3 * sec], 0.2, 0.0), np.zeros(3 * sec, np.float32), _pad(s1[: 3 * sec], 0.0, 0.2)]
            ),
            seed=6,
        ),
    )

    def shifted():
        frames, audio = _talking_clip(_pad(s2), seed=7)
        delay = int(0.5 * sec)
        return frames, np.concatenate([np.zeros(delay, np.float32), audio])[: len(audio)]

    emit("shifted_audio", shifted)
    corrupt = folder / "corrupt.mp4"
    if not corrupt.exists():
        corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["corrupt"] = corrupt
    return out
