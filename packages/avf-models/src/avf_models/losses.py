"""Pre-training targets and losses: normalised-pixel MSE with the frame-difference target (Eq. 3) and
the hierarchical cross-modal contrastive loss HCMCL (Eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from .features import denormalize_video


def _normalize_patches(x: torch.Tensor) -> torch.Tensor:
    """Per-patch, per-channel standardisation over the patch's pixels (dim -2), unbiased std + 1e-6."""
    mean = x.mean(dim=-2, keepdim=True)
    std = x.var(dim=-2, unbiased=True, keepdim=True).sqrt()
    return (x - mean) / (std + 1e-6)


@torch.no_grad()
def video_target(
    video: torch.Tensor, patch_size: int = 16, tubelet_size: int = 2, frame_diff: bool = True
) -> torch.Tensor:
    """(B, 3, T, H, W) normalised video -> (B, N, tubelet*p*p*3) per-token targets, layout (p0, p1, p2, c).

    Pixels are un-normalised to [0, 1], each tubelet is standardised per channel, and with
    ``frame_diff`` the second frame of every tubelet becomes its difference to the first (MAE-DFER's
    frame-difference target, group size = tubelet size).
    """
    x = denormalize_video(video.float())
    x = rearrange(
        x, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c", p0=tubelet_size, p1=patch_size, p2=patch_size
    )
    x = _normalize_patches(x)
    if frame_diff and tubelet_size > 1:
        b, n, _, c = x.shape
        x = x.view(b, n, tubelet_size, patch_size * patch_size, c)
        x = torch.cat((x[:, :, :1], x[:, :, 1:] - x[:, :, :1]), dim=2)
    return x.reshape(x.shape[0], x.shape[1], -1)


@torch.no_grad()
def audio_target(fbank: torch.Tensor, patch_size: int = 16) -> torch.Tensor:
    """(B, 1, T, F) fbank -> (B, N, p*p) standardised patches, time-major token order."""
    x = rearrange(fbank.float(), "b c (t p1) (f p2) -> b (t f) (p1 p2) c", p1=patch_size, p2=patch_size)
    return _normalize_patches(x).flatten(2)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. (3) as the official code computes it: per-token MSE averaged over the patch vector, weighted by
    ``weight`` (1 where the token was hidden from the encoder) and divided by the weight sum over the
    whole batch (not by (1-rho_d) N)."""
    mse = (pred.float() - target).pow(2).mean(dim=-1)
    w = weight.to(mse.dtype)
    return (mse * w).sum() / w.sum().clamp_min(1.0)


def hcmcl_loss(
    video_feats: list[torch.Tensor], audio_feats: list[torch.Tensor], temperature: float = 0.07
) -> torch.Tensor:
    """HCMCL: symmetric InfoNCE between mean-pooled, L2-normalised video and audio features of each
    selected encoder layer, summed over layers (the sum in Eq. 1, before the weight lambda)."""
    total = video_feats[0].new_zeros((), dtype=torch.float32)
    for v, a in zip(video_feats, audio_feats, strict=False):
        ev = v.float().mean(dim=1)
        ea = a.float().mean(dim=1)
        ev = ev / ev.norm(dim=-1, keepdim=True)
        ea = ea / ea.norm(dim=-1, keepdim=True)
        logits = ev @ ea.t() / temperature
        labels = torch.arange(logits.shape[0], device=logits.device)
        total = total + 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    return total
