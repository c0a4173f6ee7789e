"""Token embeddings: 3-D cube embedding for video, 2-D patch embedding for the audio fbank."""

from __future__ import annotations

import torch
from torch import nn


class CubeEmbed(nn.Module):
    """Video cube embedding: Conv3d with kernel = stride = (tubelet, patch, patch).

    (B, 3, 16, 160, 160) -> (B, 800, C), token index n = t*H'*W' + h*W' + w (raster order).  The
    submodule is called ``proj`` so the key matches the official ``patch_embed.proj.*``.
    """

    def __init__(
        self,
        dim: int,
        num_frames: int = 16,
        image_size: int = 160,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.input_shape = (in_chans, num_frames, image_size, image_size)
        self.proj = nn.Conv3d(
            in_chans,
            dim,
            kernel_size=(tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"video must be (B, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)


class AudioPatchEmbed(nn.Module):
    """Audio patch embedding: Conv2d 16x16/16 on the (1, 256, 128) fbank -> (B, 128, C), time-major
    token order n = t*8 + f (time is the image height, mel bins the width)."""

    def __init__(self, dim: int, audio_frames: int = 256, mel_bins: int = 128, patch_size: int = 16) -> None:
        super().__init__()
        self.input_shape = (1, audio_frames, mel_bins)
        self.proj = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"audio must be (B, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)
