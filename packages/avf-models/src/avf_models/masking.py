"""Encoder and decoder masks for audio-visual dual masking (paper §3.2).

Convention everywhere: ``True`` = hidden (masked), shape (B, N) over the flattened token grid.  All
generators return batched tensors with *exact* visible counts, and take an optional
``torch.Generator`` so that masks are reproducible.  Random numbers are drawn on the generator's
device (CPU by default) and moved to ``device`` afterwards.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .config import ModelConfig


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else (device or "cpu")
    return torch.rand(shape, generator=generator, device=gen_device)


def random_mask(
    batch: int,
    num_tokens: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Hide exactly int(ratio*N) uniformly random tokens per sample (audio encoder 0.8125, audio
    decoder 0.5)."""
    n_hide = int(ratio * num_tokens)
    rank = _rand((batch, num_tokens), generator, device).argsort(dim=1).argsort(dim=1)
    return (rank < n_hide).to(device or rank.device)


def tube_mask(
    batch: int,
    grid: tuple[int, int, int],
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Video encoder tube mask: one random spatial mask hiding int(ratio*H*W) positions, repeated over
    all T temporal slots (0.9 -> 90 of 100 positions, 80 of 800 tokens visible)."""
    t, h, w = grid
    spatial = random_mask(batch, h * w, ratio, generator, device)
    return spatial[:, None, :].expand(batch, t, h * w).reshape(batch, t * h * w)


@functools.lru_cache(maxsize=8)
def running_cell_patterns(grid: tuple[int, int, int], ratio: float = 0.5) -> torch.Tensor:
    """The 4 running-cell maps (VideoMAE V2) as a bool tensor (4, T*H*W).

    A 2x2 cell holds the queue [1]*k + [0]*(4-k) with k = int(4*ratio).  For start offset p and
    temporal slot t the cell is the queue rotated by p+t+1, and it is tiled over the H x W grid, so each
    frame is exactly ``ratio`` hidden and every position cycles through hidden/visible over time.
    Cached per (grid, ratio) and always built on CPU; treat the result as read-only.
    """
    t, h, w = grid
    if h % 2 or w % 2:
        raise ValueError("running-cell masking needs an even spatial grid")
    with torch.device("cpu"):
        return _build_running_cell(t, h, w, int(4 * ratio))


def _build_running_cell(t: int, h: int, w: int, k: int) -> torch.Tensor:
    queue = torch.tensor([1] * k + [0] * (4 - k), dtype=torch.bool)
    maps = []
    for p in range(4):
        frames = []
        for ti in range(t):
            ptr = p + ti + 1
            cell = torch.stack([queue[(j + ptr) % 4] for j in range(4)]).view(2, 2)
            frames.append(cell.repeat(h // 2, w // 2).flatten())
        maps.append(torch.stack(frames).flatten())
    return torch.stack(maps)


def running_cell_mask(
    batch: int,
    grid: tuple[int, int, int],
    ratio: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Video decoder mask: each sample draws one of the 4 precomputed running-cell maps uniformly."""
    maps = running_cell_patterns(grid, ratio)
    gen_device = generator.device if generator is not None else "cpu"
    idx = torch.randint(0, 4, (batch,), generator=generator, device=gen_device).cpu()
    return maps[idx].to(device or "cpu")


@dataclass
class PretrainMasks:
    """The four pre-training masks, each bool (B, N) with True = hidden.

    ``video``/``audio`` hide tokens from the encoders; ``video_decoder``/``audio_decoder`` hide tokens
    from the decoders, so the decoders predict the *not hidden* positions of these (Eq. 2).
    """

    video: torch.Tensor
    audio: torch.Tensor
    video_decoder: torch.Tensor
    audio_decoder: torch.Tensor

    @classmethod
    def cat(cls, parts: list[PretrainMasks]) -> PretrainMasks:
        """Concatenate along the batch (e.g. per-sample masks made in data-loader workers)."""
        return cls(
            *(torch.cat([getattr(p, f) for p in parts]) for f in ("video", "audio", "video_decoder", "audio_decoder"))
        )

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Plain dict (collate-friendly); rebuild with ``PretrainMasks(**d)``."""
        return {
            "video": self.video,
            "audio": self.audio,
            "video_decoder": self.video_decoder,
            "audio_decoder": self.audio_decoder,
        }

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PretrainMasks:
        return PretrainMasks(
            *(
                m.to(device, non_blocking=non_blocking)
                for m in (self.video, self.audio, self.video_decoder, self.audio_decoder)
            )
        )


class PretrainMaskGenerator:
    """Builds all four masks for a config; usable in data-loader workers (CPU) or inside the model.

    AVF-MAE++: tube 0.9 / random 0.8125 for the encoders, running cell 0.5 / random 0.5 for the
    decoders.  With ``decoder_masking=False`` (HiCMAE) the decoder mask is the complement of the encoder
    mask, i.e. the decoder reconstructs every encoder-masked token.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def __call__(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> PretrainMasks:
        c = self.config
        video = tube_mask(batch, c.grid, c.mask_ratio, generator, device)
        audio = random_mask(batch, c.num_patches_audio, c.mask_ratio_audio, generator, device)
        if c.decoder_masking:
            video_dec = running_cell_mask(batch, c.grid, c.decoder_mask_ratio, generator, device)
            audio_dec = random_mask(batch, c.num_patches_audio, c.decoder_mask_ratio_audio, generator, device)
        else:
            video_dec, audio_dec = ~video, ~audio
        return PretrainMasks(video, audio, video_dec, audio_dec)


def visible_indices(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (B, count) of the not-hidden tokens in ascending (raster) order.

    A stable argsort puts the False entries first without a host sync (no ``nonzero``); ``count`` is the
    static number of visible tokens known from the config.
    """
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :count]
