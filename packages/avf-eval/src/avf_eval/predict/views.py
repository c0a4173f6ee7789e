"""Cut a curated clip into the model's test views: segments in time x crops in space.

This follows the paper's inference setting (Tab. 6: 2 segments x 2 crops) and the official
test loader: segments are evenly spaced 16-frame windows (stride 4) over the clip, crops are
evenly spaced squares along the long image side. avf-data's face crops are square, so there
the crops coincide and only distinct views are kept. Audio for a view is the waveform under
its frames, turned into the log-mel fbank of ``avf_models.features``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from avf_eval.predict.checkpoint import ViewSpec


def segment_starts(num_frames: int, span: int, segments: int) -> list[int]:
    """First frame of each temporal segment; short clips start at 0 and repeat their last frame."""
    room = max(num_frames - span, 0)
    if segments <= 1:
        return [room // 2]
    return sorted({int(round(room * s / (segments - 1))) for s in range(segments)})


def _crop_boxes(height: int, width: int, crops: int) -> list[tuple[int, int, int]]:
    side = min(height, width)
    room = max(height, width) - side
    offsets = sorted({int(round(room * c / (crops - 1))) if crops > 1 else room // 2 for c in range(max(crops, 1))})
    return [(o, 0, side) if height > width else (0, o, side) for o in offsets]


def clip_views(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int, spec: ViewSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, 3, T, S, S)`` normalised video and ``(V, 1, A, 128)`` fbank for one clip."""
    from avf_models.features import SAMPLE_RATE, log_mel_fbank, normalize_video

    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"audio must be {SAMPLE_RATE} Hz, got {sample_rate}")
    span = spec.frames * spec.stride
    videos, audios = [], []
    for start in segment_starts(len(frames), span, spec.segments):
        index = np.clip(start + np.arange(spec.frames) * spec.stride, 0, len(frames) - 1)
        x = torch.from_numpy(np.ascontiguousarray(frames[index])).permute(0, 3, 1, 2).float().div_(255.0)
        first = int(round(start / fps * sample_rate))
        last = int(round((start + span + 1) / fps * sample_rate))
        fbank = log_mel_fbank(torch.from_numpy(np.ascontiguousarray(audio[first:last], dtype=np.float32)), spec.audio_frames)
        for top, left, side in _crop_boxes(x.shape[-2], x.shape[-1], spec.crops):
            crop = x[..., top:top + side, left:left + side]
            if side != spec.image_size:
                crop = F.interpolate(crop, size=(spec.image_size, spec.image_size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
            videos.append(normalize_video(crop.permute(1, 0, 2, 3).contiguous()))
            audios.append(fbank.unsqueeze(0))
    return torch.stack(videos), torch.stack(audios)
