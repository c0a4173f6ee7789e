"""Clip -> model-input transforms: frame sampling, spatial augmentation and the audio fbank.

Everything here takes an explicit ``numpy.random.Generator`` so that a clip's augmentation is a
pure function of (seed, pass, stream position). That is what makes ``--resume`` reproduce an
uninterrupted run exactly, whatever the number of loader workers did in between.

Video follows the official loaders (VideoMAE-style ``kinetics_av.py`` / ``datasets_av.py`` of the
AVF-MAE release, which read already face-cropped mp4s with decord): 16 frames with stride 4,
``GroupMultiScaleCrop(160, [1, .875, .75, .66])`` for pre-training; RandAugment, random resized
crop, flip and random erasing for the labelled stages; ImageNet normalisation. Audio is the
waveform under the sampled frames (65 frame periods, 2.6 s at 25 fps), a random gain (the only
effective part of AudioMAE's roll+mag augmentation) and the Kaldi fbank of
``avf_models.features`` (computed by ``avf_train.fbank``, the same numbers, faster).

A view is made in two steps so that the loader decodes only the frames it uses: ``view_start``
draws the window (always the first random draw), ``view_frames`` lists its frames, and
``finish_view`` makes the view from those frames alone with the same generator. ``make_view``
does both on a fully decoded clip. Pre-training crops and resizes the uint8 frames before
converting to float (torch's antialiased bilinear on uint8, the same filter as the float path
up to rounding to 1/255): converting 16 full frames to float first cost ~15 ms of the ~17 ms
the pre-training video took per clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avf_models.features import IMAGENET_MEAN, IMAGENET_STD, log_mel_fbank_batch, normalize_video

from .config import ClipArgs, TrainConfig


@dataclass
class ClipTransformConfig(ClipArgs):
    """``ClipArgs`` plus the view ``mode`` the stage needs: what the loader workers receive."""

    mode: str = "pretrain"  # pretrain | finetune | test

    @classmethod
    def for_mode(cls, clip: ClipArgs, mode: str) -> ClipTransformConfig:
        """The settings of ``clip`` (a config's ``data.clip``) for ``mode``."""
        if mode not in ("pretrain", "finetune", "test"):
            raise ValueError(f"view mode must be pretrain, finetune or test, got {mode!r}")
        return cls(mode=mode, **{f.name: getattr(clip, f.name) for f in fields(ClipArgs)})

    @property
    def num_views(self) -> int:
        return self.test_segments * self.test_crops if self.mode == "test" else 1


def transform_config(cfg: TrainConfig, mode: str) -> ClipTransformConfig:
    """The loader's per-clip settings (``data.clip``) for ``mode``: pretrain, finetune or test."""
    return ClipTransformConfig.for_mode(cfg.data.clip, mode)


# --------------------------------------------------------------------------- frame sampling


def sample_frame_indices(num_source: int, num_frames: int, stride: int, start: int) -> np.ndarray:
    """``num_frames`` indices ``start + i*stride``, clamped to the clip (short clips repeat the end)."""
    idx = start + np.arange(num_frames) * stride
    return np.clip(idx, 0, max(num_source - 1, 0))


def random_start(num_source: int, span: int, rng: np.random.Generator) -> int:
    return int(rng.integers(0, num_source - span + 1)) if num_source > span else 0


def eval_view_start(num_source: int, span: int, segment: int, segments: int) -> int:
    """Evenly spaced windows over the clip, as the official test loader (``tick`` spacing)."""
    if num_source <= span or segments <= 1:
        return max(0, (num_source - span) // 2) if segments <= 1 else 0
    return int(round((num_source - span) * segment / (segments - 1)))


def audio_span(sample_rate: int, fps: float, first_frame: int, span: int) -> tuple[int, int]:
    """Sample range from the start of ``first_frame`` to the end of frame ``first_frame + span``."""
    return int(round(first_frame / fps * sample_rate)), int(round((first_frame + span + 1) / fps * sample_rate))


def audio_window(
    audio: np.ndarray, sample_rate: int, fps: float, first_frame: int, span: int, offset: int = 0
) -> np.ndarray:
    """``audio_span`` of ``audio``, whose first sample is sample ``offset`` of the clip."""
    start, stop = audio_span(sample_rate, fps, first_frame, span)
    return audio[max(0, start - offset) : max(0, stop - offset)]


# --------------------------------------------------------------------------- spatial ops


def to_float(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def multi_scale_crop_box(
    h: int, w: int, size: int, scales: tuple[float, ...], rng: np.random.Generator, max_distort: int = 1
) -> tuple[int, int, int, int]:
    """TSN's GroupMultiScaleCrop with ``more_fix_crop``: one (w, h) scale pair and one of 13 fixed
    offsets for the whole clip, as ``(x, y, width, height)`` (two draws from ``rng``)."""
    base = min(h, w)
    sizes = [int(base * s) for s in scales]
    sizes = [size if abs(s - size) < 3 else s for s in sizes]
    pairs = [(cw, ch) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes) if abs(i - j) <= max_distort]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    ws, hs = (w - cw) // 4, (h - ch) // 4
    offsets = [
        (0, 0),
        (4 * ws, 0),
        (0, 4 * hs),
        (4 * ws, 4 * hs),
        (2 * ws, 2 * hs),
        (0, 2 * hs),
        (4 * ws, 2 * hs),
        (2 * ws, 4 * hs),
        (2 * ws, 0),
        (ws, hs),
        (3 * ws, hs),
        (ws, 3 * hs),
        (3 * ws, 3 * hs),
    ]
    ox, oy = offsets[int(rng.integers(len(offsets)))]
    return ox, oy, cw, ch


def multi_scale_crop(
    x: torch.Tensor, size: int, scales: tuple[float, ...], rng: np.random.Generator, max_distort: int = 1
) -> torch.Tensor:
    """``multi_scale_crop_box`` on float frames (..., H, W), resized to ``size``x``size``."""
    ox, oy, cw, ch = multi_scale_crop_box(x.shape[-2], x.shape[-1], size, scales, rng, max_distort)
    return resize(x[..., oy : oy + ch, ox : ox + cw], (size, size))


def crop_resize_u8(frames: np.ndarray, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop ``box`` (x, y, w, h) from uint8 frames (T, H, W, 3) and resize it to (T, 3, size, size)
    uint8 with the float path's filter (bilinear, antialiased when shrinking)."""
    ox, oy, cw, ch = box
    x = torch.from_numpy(frames[:, oy : oy + ch, ox : ox + cw]).permute(0, 3, 1, 2)
    if (ch, cw) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


_U8_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD]).view(3, 1, 1, 1)
_U8_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=False)]).view(3, 1, 1, 1)


def normalize_u8(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 frames (T, 3, H, W) -> the model's normalised float video (3, T, H, W), written into
    ``out`` when given."""
    t, c, h, w = x.shape
    if out is None:
        out = torch.empty(c, t, h, w)
    out.copy_(x.permute(1, 0, 2, 3))
    return out.mul_(_U8_SCALE).add_(_U8_SHIFT)


def normalize_u8_batch(video: torch.Tensor, boxes: list[tuple[int, int, int, int]] | None = None) -> torch.Tensor:
    """A batch of uint8 frames (B, T, H, W, 3), on any device -> normalised float (B, 3, T, H, W).

    ``boxes`` (one per clip) are crop boxes ``(x, y, width, height)`` still to apply: each clip's box is
    cut out and resized back to H x W, in float, as ``multi_scale_crop`` does (pre-training views
    whose crop is left to the device). Clips with the same box size are resized together, so a
    batch costs one resize per distinct size (at most ten for the paper's four scales).
    """
    b, t, h, w, c = video.shape
    out = torch.empty((b, c, t, h, w), dtype=torch.float32, device=video.device)
    out.copy_(video.permute(0, 4, 1, 2, 3))
    if boxes is not None:
        corners: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # box size -> (row, x, y)
        for row, (ox, oy, cw, ch) in enumerate(boxes):
            if (cw, ch) != (w, h):
                corners.setdefault((cw, ch), []).append((row, ox, oy))
        for (cw, ch), group in corners.items():
            rows = [row for row, _, _ in group]
            # (G, 3, T, ch, cw): the group's crops, copied out before their rows are overwritten
            crops = torch.stack([out[row, :, :, oy : oy + ch, ox : ox + cw] for row, ox, oy in group])
            flat = crops.transpose(1, 2).reshape(len(rows) * t, c, ch, cw)
            resized = F.interpolate(flat, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            out[rows] = resized.clamp_(0, 255).reshape(len(rows), t, c, h, w).transpose(1, 2)
    return out.mul_(_U8_SCALE.to(video.device)).add_(_U8_SHIFT.to(video.device))


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Inception-style crop (same box for all frames), the fine-tuning ``spatial_sampling``."""
    h, w = x.shape[-2:]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            oy, ox = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return resize(x[..., oy : oy + ch, ox : ox + cw], (size, size))
    side = min(h, w)  # fall back to a centre crop
    oy, ox = (h - side) // 2, (w - side) // 2
    return resize(x[..., oy : oy + side, ox : ox + side], (size, size))


def short_side_crop(x: torch.Tensor, size: int, position: int, positions: int) -> torch.Tensor:
    """Resize the short side to ``size`` and take crop ``position`` of ``positions`` along the long
    side (test views). On square clips every position is the same crop, as in the official code."""
    h, w = x.shape[-2:]
    if h <= w:
        nh, nw = size, max(size, int(round(w * size / h)))
    else:
        nh, nw = max(size, int(round(h * size / w))), size
    x = resize(x, (nh, nw))
    slack = max(nh, nw) - size
    offset = 0 if positions <= 1 else int(round(slack * position / (positions - 1)))
    return x[..., offset : offset + size, :] if nh > nw else x[..., :, offset : offset + size]


# --------------------------------------------------------------------------- RandAugment


def _affine(x: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    theta = torch.tensor(matrix, dtype=x.dtype).unsqueeze(0).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    fill = 0.5  # timm fills with the ImageNet mean grey; 0.5 is close and keeps this simple
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out + fill).clamp_(0, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    return (b + factor * (a - b)).clamp_(0, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def _op(name: str, x: torch.Tensor, level: float, sign: float) -> torch.Tensor:
    """One RandAugment op at ``level`` in [0, 1] (timm's "increasing" variants)."""
    if name == "AutoContrast":
        lo = x.amin(dim=(0, 2, 3), keepdim=True)
        hi = x.amax(dim=(0, 2, 3), keepdim=True)
        return ((x - lo) / (hi - lo).clamp_min(1e-3)).clamp_(0, 1)
    if name == "Invert":
        return 1.0 - x
    if name == "Rotate":
        a = math.radians(30.0 * level * sign)
        return _affine(x, [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    if name == "ShearX":
        return _affine(x, [[1.0, 0.3 * level * sign, 0.0], [0.0, 1.0, 0.0]])
    if name == "ShearY":
        return _affine(x, [[1.0, 0.0, 0.0], [0.3 * level * sign, 1.0, 0.0]])
    if name == "TranslateX":
        return _affine(x, [[1.0, 0.0, 2 * 0.45 * level * sign], [0.0, 1.0, 0.0]])
    if name == "TranslateY":
        return _affine(x, [[1.0, 0.0, 0.0], [0.0, 1.0, 2 * 0.45 * level * sign]])
    if name == "Posterize":
        bits = max(1, 8 - int(round(4 * level)))
        q = 2 ** (8 - bits)
        return torch.floor(x * 255.0 / q) * q / 255.0
    if name == "Solarize":
        thresh = 1.0 - level
        return torch.where(x >= thresh, 1.0 - x, x)
    if name == "SolarizeAdd":
        add = 110.0 / 255.0 * level
        return torch.where(x < 128 / 255, (x + add).clamp(0, 1), x)
    factor = 1.0 + 0.9 * level * sign
    if name == "Color":
        return _blend(x, _grey(x), factor)
    if name == "Contrast":
        return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor)
    if name == "Brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if name == "Sharpness":
        kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype) / 13.0
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
        return _blend(x, blurred, factor)
    raise ValueError(f"unknown RandAugment op {name!r}")


RAND_AUGMENT_OPS: tuple[str, ...] = (
    "AutoContrast",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)


def parse_rand_augment(spec: str) -> tuple[int, float, float]:
    """``rand-m7-n4-mstd0.5`` -> (num_ops 4, magnitude 7, magnitude std 0.5)."""
    ops, mag, mstd = 2, 9.0, 0.0
    for part in spec.split("-")[1:]:
        if part.startswith("mstd"):
            mstd = float(part[4:])
        elif part.startswith("m"):
            mag = float(part[1:])
        elif part.startswith("n"):
            ops = int(part[1:])
    return ops, mag, mstd


def rand_augment(x: torch.Tensor, spec: str, rng: np.random.Generator) -> torch.Tensor:
    """RandAugment with one set of ops and magnitudes for all frames of the clip (timm semantics:
    each op applied with probability 0.5, magnitude out of 10, optional Gaussian magnitude noise).
    Equalize is left out (no cheap tensor version); the remaining 14 timm ops are here."""
    num_ops, magnitude, mstd = parse_rand_augment(spec)
    for _ in range(num_ops):
        name = RAND_AUGMENT_OPS[int(rng.integers(len(RAND_AUGMENT_OPS)))]
        if rng.random() >= 0.5:
            continue
        m = magnitude + (rng.normal(0.0, mstd) if mstd > 0 else 0.0)
        level = float(np.clip(m, 0.0, 10.0)) / 10.0
        sign = -1.0 if rng.random() < 0.5 else 1.0
        x = _op(name, x, level, sign)
    return x


def random_erase(
    x: torch.Tensor,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.02, 1 / 3),
    log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
) -> torch.Tensor:
    """timm RandomErasing, mode 'pixel', one box shared by all frames of a normalised clip (C,T,H,W)."""
    _, _, h, w = x.shape
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < eh < h and 0 < ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            noise = rng.standard_normal((x.shape[0], x.shape[1], eh, ew)).astype(np.float32)
            x = x.clone()
            x[:, :, top : top + eh, left : left + ew] = torch.from_numpy(noise)
            return x
    return x


# --------------------------------------------------------------------------- audio


def audio_gain(cfg: ClipTransformConfig, rng: np.random.Generator | None) -> float:
    """The random gain of a training view (Beta(10, 10) + 0.5), 1 at test time or when disabled."""
    return float(rng.beta(10.0, 10.0) + 0.5) if rng is not None and cfg.audio_gain_aug else 1.0


def audio_features(segment: np.ndarray, cfg: ClipTransformConfig, rng: np.random.Generator | None) -> torch.Tensor:
    """Waveform segment -> normalised (1, audio_frames, 128) fbank, with the random gain in training."""
    wav = torch.from_numpy(np.ascontiguousarray(segment, dtype=np.float32))
    gain = audio_gain(cfg, rng)
    if gain != 1.0:
        wav = wav * gain
    return log_mel_fbank_batch(wav.reshape(1, -1), target_frames=cfg.audio_frames)


# --------------------------------------------------------------------------- whole clip


def view_start(num_source: int, cfg: ClipTransformConfig, rng: np.random.Generator | None, view: int = 0) -> int:
    """First source frame of a view: the first draw from ``rng`` in training modes; in test mode
    segment ``view // test_crops`` of evenly spaced windows."""
    span = cfg.num_frames * cfg.sampling_rate
    if cfg.mode == "test":
        return eval_view_start(num_source, span, view // cfg.test_crops, cfg.test_segments)
    assert rng is not None
    return random_start(num_source, span, rng)


def view_frames(num_source: int, cfg: ClipTransformConfig, start: int) -> np.ndarray:
    """The source frames a view starting at ``start`` uses (clamped: short clips repeat the end)."""
    return sample_frame_indices(num_source, cfg.num_frames, cfg.sampling_rate, start)


def make_view(
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
    cfg: ClipTransformConfig,
    rng: np.random.Generator | None,
    view: int = 0,
) -> dict[str, Any]:
    """One model input {video (3,T,S,S), audio (1,A,128)} from a decoded clip (all its frames).

    ``rng`` drives every random choice in training modes; ``mode == 'test'`` is deterministic and
    ``view`` picks segment ``view // test_crops`` and crop ``view % test_crops``.
    """
    idx = view_frames(len(frames), cfg, view_start(len(frames), cfg, rng, view))
    return finish_view(frames[idx], int(idx[0]), fps, audio, sample_rate, cfg, rng, view)


def finish_view(
    frames: np.ndarray,
    first_frame: int,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
    cfg: ClipTransformConfig,
    rng: np.random.Generator | None,
    view: int = 0,
    out: torch.Tensor | None = None,
    audio_offset: int = 0,
    fbank: bool = True,
) -> dict[str, Any]:
    """The view from its own frames (T, H, W, 3) uint8, ``first_frame`` being the source index of
    the first; ``rng`` continues after ``view_start``'s draw. ``audio`` starts at sample
    ``audio_offset`` of the clip.

    ``out`` receives the video. A uint8 ``out`` (pre-training only) receives the frames as they
    are, (T, S, S, 3), and the view's crop box comes back as ``box`` (``(0, 0, S, S)`` when the
    frames were not S x S and were cropped here); ``fbank=False`` returns the view's waveform and
    gain (``wave``, ``gain``) instead of its fbank. The consumer finishes all three
    (``avf_train.batches.model_inputs``, on the GPU when training there). That is a quarter of
    the video bytes through shared memory and the host-to-device copy, and neither the crop and
    resize, nor the float pass, nor the fbank on the loader's CPU.
    """
    if sample_rate != 16_000:
        raise ValueError(f"audio must be 16 kHz (shard format), got {sample_rate}")
    span = cfg.num_frames * cfg.sampling_rate
    raw = out is not None and out.dtype == torch.uint8
    if raw and cfg.mode != "pretrain":
        raise ValueError(f"uint8 video output is for pre-training views, not {cfg.mode!r}")
    if cfg.mode == "pretrain":
        video, box = _pretrain_video(frames, cfg, rng, out, raw)
    else:
        video, box = _supervised_video(frames, cfg, rng, view, out), None
    segment = audio_window(audio, sample_rate, fps, first_frame, span, audio_offset)
    rng = rng if cfg.mode != "test" else None
    crop = {"box": box} if raw else {}
    if not fbank:
        wave = np.ascontiguousarray(segment, dtype=np.float32)
        return {"video": video, "wave": wave, "gain": audio_gain(cfg, rng), **crop}
    return {"video": video, "audio": audio_features(segment, cfg, rng), **crop}


def _pretrain_video(
    frames: np.ndarray, cfg: ClipTransformConfig, rng: np.random.Generator | None, out: torch.Tensor | None, raw: bool
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """A pre-training view's video and the crop box left to the consumer (multi-scale crop)."""
    assert rng is not None
    size = cfg.image_size
    box = multi_scale_crop_box(frames.shape[1], frames.shape[2], size, cfg.crop_scales, rng)
    if raw and frames.shape[1:3] == (size, size):
        # the consumer crops and resizes (normalize_u8_batch, on the device): the frames go as they are
        if not np.may_share_memory(frames, out.numpy()):  # the loader may have decoded them in place
            out.copy_(torch.from_numpy(frames))
        return out, box
    x = crop_resize_u8(frames, box, size)  # (T, 3, S, S) uint8
    video = out.copy_(x.permute(0, 2, 3, 1)) if raw else normalize_u8(x, out)  # raw: a plain copy
    return video, (0, 0, size, size)  # nothing left to crop


def _supervised_video(
    frames: np.ndarray, cfg: ClipTransformConfig, rng: np.random.Generator | None, view: int, out: torch.Tensor | None
) -> torch.Tensor:
    """A fine-tuning view (resize, RandAugment, random resized crop, flip, erase) or a test view
    (short-side crop number ``view % test_crops``), normalised, (3, T, S, S)."""
    x = to_float(frames)  # (T, 3, H, W)
    if cfg.mode == "finetune":
        assert rng is not None
        x = resize(x, (cfg.image_size, cfg.image_size))
        if cfg.rand_augment:
            x = rand_augment(x, cfg.rand_augment, rng)
        x = random_resized_crop(x, cfg.image_size, cfg.random_resized_crop_scale, rng)
        if cfg.flip and rng.random() < 0.5:
            x = x.flip(-1)
    else:
        x = short_side_crop(x, cfg.image_size, view % cfg.test_crops, cfg.test_crops)
    video = normalize_video(x.permute(1, 0, 2, 3).contiguous())  # (3, T, H, W)
    if cfg.mode == "finetune" and cfg.random_erase > 0 and rng.random() < cfg.random_erase:
        video = random_erase(video, rng)
    return out.copy_(video) if out is not None else video
