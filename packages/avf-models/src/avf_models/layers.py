"""Small building blocks: FFN, stochastic depth, ViT block, cross/self block, positional tables."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, GeneralAttention

LN_EPS = 1e-6  # every LayerNorm except the ER layer's uses eps 1e-6, as in the official code


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LN_EPS)


class Mlp(nn.Module):
    """The transformer FFN (Linear -> GELU -> Linear), hidden width = mlp_ratio x dim."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample; identity at rate 0 or in eval mode (pre-training uses rate 0)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-LN ViT block: x + MHSA(LN(x)), then x + FFN(LN(x)). HiCMAE encoder layer / decoder block 0."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CSBlock(nn.Module):
    """Cross-then-self block: x += MHCA(LN(x), LN(ctx)); x += MHSA(LN(x)); x += FFN(LN(x)).

    Used for the decoders' hierarchical skip connections (ctx = an intermediate encoder feature) and,
    in the HiCMAE baseline, for the cross-modal fusion encoder (ctx = the other modality).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.cross_attn = GeneralAttention(dim, num_heads)
        self.cross_norm1 = layer_norm(dim)
        self.cross_norm2 = layer_norm(dim)
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.cross_attn(self.cross_norm1(x), self.cross_norm2(context)))
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sinusoidal positional table over the flattened token index, as in the official code.

    PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)). It is a fixed table, so the
    models register it as a non-persistent buffer: it follows ``.to(device)`` but is not in state dicts,
    exactly like the official checkpoints.
    """
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    i = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)
    table = torch.where(i.remainder(2) == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def trunc_normal_clipped_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Truncated normal with std ``std`` cut at +-std (not +-2 std): the official wrapper does this,
    so region and mask tokens start with an effective std of ~0.54*std."""
    return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-std, b=std)


def init_linear_xavier(module: nn.Module) -> None:
    """Official init for encoder/fusion/decoder: Linear xavier-uniform with zero bias, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Linearly increasing stochastic-depth rates, one per layer."""
    if depth <= 1:
        return [0.0] * depth
    return [rate * i / (depth - 1) for i in range(depth)]
