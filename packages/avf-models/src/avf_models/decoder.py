"""Light ViT decoder with hierarchical skip connections (HiCMAE / AVF-MAE++, paper §3.1)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import Block, CSBlock, layer_norm


class Decoder(nn.Module):
    """Block 0 is a plain ViT block; block i >= 1 is a CSBlock that cross-attends to skip feature -i
    (block 1 sees the deepest selected encoder layer).  Only the last ``n_pred`` tokens (the [MASK]
    queries) go through the final LN + linear head, which predicts one flattened patch per token."""

    def __init__(self, dim: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        blocks: list[nn.Module] = [Block(dim, num_heads, mlp_ratio)]
        blocks += [CSBlock(dim, num_heads, mlp_ratio) for _ in range(depth - 1)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = layer_norm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], n_pred: int) -> torch.Tensor:
        x = self.blocks[0](x)
        for i, blk in enumerate(self.blocks[1:], start=1):
            x = blk(x, skips[-i])
        return self.head(self.norm(x[:, -n_pred:]))
