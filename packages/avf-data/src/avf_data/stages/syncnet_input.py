"""SyncNet's own input, built the way the reference pipeline builds it.

SyncNet v2 was trained on, and its confidence scale refers to, the crops and
audio of joonson/syncnet_python's ``run_pipeline.py`` + ``SyncNetInstance``.
Feeding it anything else (e.g. a crop rebuilt from our 160 px training crop)
shifts its distances. This module reproduces the reference inputs from what
our pipeline has: per-frame face boxes in source pixels and the source frames.

Crop geometry (reference ``crop_video``), per 25 fps frame ``k`` of a track:

* ``s = max(box w, box h) / 2``, centre ``x``, ``y`` from the face box;
* ``s``, ``x``, ``y`` are each median-filtered over the track with
  ``scipy.signal.medfilt(kernel_size=13)`` (zero-padded at both ends, as the
  reference: the first and last 6 frames are pulled towards smaller values);
* with ``cs = 0.4`` (``crop_scale``) the crop keeps rows
  ``y - s .. y + s (1 + 2 cs)`` and columns ``x - s (1 + cs) .. x + s (1 + cs)``,
  i.e. the face plus the chin/neck below it, outside the image grey 110;
* the crop is resized to 224 x 224 (OpenCV bilinear).

The reference pads the frame by ``bsi = int(s (1 + 2 cs))`` and slices the
padded array at ``int(...)`` of the padded coordinates; :func:`reference_rects`
does the same float64 arithmetic, so the integer rectangle (and hence every
pixel) is identical, and returns it in source pixels.

Audio: the reference extracts ``ffmpeg -ac 1 -ar 16000 -acodec pcm_s16le``:
mono ``(L + R) / 2``, 16 kHz, rounded to 16-bit integers; SyncNet's MFCC is
computed on those integers. :func:`downmix_reference` and :func:`to_int16`
give the same samples from float audio.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

__all__ = [
    "CROP_SCALE",
    "MEDFILT_KERNEL",
    "PAD_GREY",
    "CROP_SIZE",
    "CutRegion",
    "reference_rects",
    "reference_crops",
    "cut_padded",
    "array_cutter",
    "downmix_reference",
    "to_int16",
]

CROP_SCALE = 0.4  # run_pipeline.py --crop_scale default
MEDFILT_KERNEL = 13  # scipy.signal.medfilt kernel on s, x, y
PAD_GREY = 110  # np.pad constant of the reference crop
CROP_SIZE = 224

#: ``cut_region(k, x0, y0, x1, y1, out_w, out_h) -> (out_h, out_w, 3) uint8 RGB``:
#: frame ``k``'s integer pixel rectangle ``[x0, x1) x [y0, y1)`` in source pixels
#: (it may extend past the frame: those pixels are grey 110), resized to
#: ``out_w x out_h`` with OpenCV's bilinear ``cv2.resize`` (see :func:`cut_padded`).
CutRegion = Callable[[int, int, int, int, int, int, int], np.ndarray]


def reference_rects(face_boxes: np.ndarray, crop_scale: float = CROP_SCALE, kernel: int = MEDFILT_KERNEL) -> np.ndarray:
    """``(T, 4)`` float face boxes ``[x0, y0, x1, y1]`` (source px, one per 25 fps
    frame) -> ``(T, 4)`` int64 crop rectangles ``[x0, y0, x1, y1]`` (half-open)."""
    from scipy.signal import medfilt

    boxes = np.asarray(face_boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"face_boxes must be (T, 4) [x0, y0, x1, y1], got shape {boxes.shape}")
    if len(boxes) == 0:
        return np.zeros((0, 4), np.int64)
    if not np.isfinite(boxes).all():
        raise ValueError("face_boxes hold NaN/inf; interpolate missing detections first")
    s = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    y = (boxes[:, 1] + boxes[:, 3]) / 2
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    with warnings.catch_warnings():  # tracks shorter than the kernel: zero-padded, as the reference
        warnings.simplefilter("ignore", UserWarning)
        s, x, y = (medfilt(v, kernel_size=kernel) for v in (s, x, y))
    cs = crop_scale
    out = np.empty((len(boxes), 4), np.int64)
    for k in range(len(boxes)):
        bs = s[k]
        bsi = int(bs * (1 + 2 * cs))  # the reference's padding
        my, mx = y[k] + bsi, x[k] + bsi  # centre in padded coordinates
        out[k] = (
            int(mx - bs * (1 + cs)) - bsi,
            int(my - bs) - bsi,
            int(mx + bs * (1 + cs)) - bsi,
            int(my + bs * (1 + 2 * cs)) - bsi,
        )
    return out


def reference_crops(
    cut_region: CutRegion, face_boxes: np.ndarray, size: int = CROP_SIZE, crop_scale: float = CROP_SCALE
) -> np.ndarray:
    """SyncNet input frames of one face track: ``(T, size, size, 3)`` uint8 RGB.

    ``face_boxes``: ``(T, 4)`` ``[x0, y0, x1, y1]`` per 25 fps frame in source
    pixels (raw detections interpolated between detection frames, *not*
    smoothed: the median filter here is the smoothing). ``cut_region``: see
    :data:`CutRegion`; it is called once per frame, in order.
    """
    rects = reference_rects(face_boxes, crop_scale)
    out = np.empty((len(rects), size, size, 3), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        out[k] = cut_region(k, int(x0), int(y0), int(x1), int(y1), size, size)
    return out


def cut_padded(
    frame: np.ndarray, x0: int, y0: int, x1: int, y1: int, out_w: int, out_h: int, fill: int = PAD_GREY
) -> np.ndarray:
    """``frame[y0:y1, x0:x1]`` with ``fill`` outside the frame, resized to ``out_w x out_h``.

    Equal, pixel for pixel, to the reference's ``np.pad(frame, bsi, 110)`` +
    slice + ``cv2.resize(face, (224, 224))`` whenever its slice stays inside the
    padded frame (always, for face centres inside the image). Only the
    rectangle is copied, not a padded copy of the whole (source-resolution)
    frame.
    """
    import cv2

    h, w = frame.shape[:2]
    x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
    if x1 <= x0 or y1 <= y0:  # a zero-size face box
        return np.full((out_h, out_w, 3), fill, np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if (sx0, sy0, sx1, sy1) == (x0, y0, x1, y1):
        region = frame[y0:y1, x0:x1]
    else:
        region = np.full((y1 - y0, x1 - x0, 3), fill, np.uint8)
        if sx1 > sx0 and sy1 > sy0:
            region[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return cv2.resize(np.ascontiguousarray(region), (out_w, out_h), interpolation=cv2.INTER_LINEAR)


def array_cutter(frames: np.ndarray) -> CutRegion:
    """A :data:`CutRegion` over in-memory ``(T, H, W, 3)`` uint8 RGB source frames."""

    def cut(k: int, x0: int, y0: int, x1: int, y1: int, out_w: int, out_h: int) -> np.ndarray:
        return cut_padded(frames[k], x0, y0, x1, y1, out_w, out_h)

    return cut


def downmix_reference(audio: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """Mono as ``ffmpeg -ac 1`` writes 16-bit output: ``(L + R) / 2`` for stereo.

    (FFmpeg's default stereo-to-mono matrix is 0.7071 per channel, normalised
    to sum 1 for integer outputs; PyAV resampling to *float* mono skips that
    normalisation and gives ``(L + R) / sqrt 2``.) Mono input is returned
    as is; other layouts raise, since FFmpeg's matrix for them is not a plain mean.
    """
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        return a
    a = np.moveaxis(a, channel_axis, -1)
    if a.shape[-1] == 1:
        return a[..., 0]
    if a.shape[-1] == 2:
        return (a[..., 0] + a[..., 1]) * np.float32(0.5)
    raise ValueError(f"downmix_reference handles mono or stereo, got {a.shape[-1]} channels")


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> the int16 values FFmpeg's float-to-s16 conversion
    writes (``lrintf(x * 32768)``, saturated), as float64 for the MFCC."""
    x = np.rint(np.asarray(audio, dtype=np.float32).astype(np.float64) * 32768.0)
    return np.clip(x, -32768.0, 32767.0)
