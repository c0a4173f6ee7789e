"""Attention kernels and attention layers shared by every AVF-MAE++ component.

One process-wide switch selects the kernel: xformers ``memory_efficient_attention`` when the
tensors live on CUDA and xformers is importable, PyTorch ``scaled_dot_product_attention`` (SDPA)
otherwise.  Both compute softmax(QK^T / sqrt(d)) V (paper Eq. 7); the switch exists only because the
kernels differ in speed and memory on GPUs.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Backend = Literal["auto", "sdpa", "xformers"]
_BACKEND: Backend = "auto"


def set_backend(name: Backend) -> None:
    """Select the attention kernel for all layers: "auto" (xformers on CUDA if installed), "sdpa" or
    "xformers" (raises at call time if xformers is missing or tensors are on CPU)."""
    global _BACKEND
    if name not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"unknown attention backend {name!r}; use 'auto', 'sdpa' or 'xformers'")
    _BACKEND = name


def get_backend() -> Backend:
    """Return the currently selected backend name (not the resolved kernel)."""
    return _BACKEND


@functools.cache
def _xformers_ops():
    try:
        import xformers.ops as xops  # type: ignore[import-not-found]
    except Exception:  # pragma: no cover - depends on the install
        return None
    return xops


def xformers_available() -> bool:
    """True when xformers can be imported (it is the optional ``gpu`` extra)."""
    return _xformers_ops() is not None


def resolve_backend(device: torch.device) -> Literal["sdpa", "xformers"]:
    """The kernel that ``attention`` will really use for tensors on ``device``."""
    if _BACKEND == "sdpa":
        return "sdpa"
    if _BACKEND == "xformers":
        if device.type != "cuda" or not xformers_available():
            raise RuntimeError("attention backend 'xformers' needs CUDA tensors and the xformers package")
        return "xformers"
    return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head scaled dot-product attention, Eq. (7).

    Inputs and output are laid out (B, N, H, D): that is xformers' native layout, and SDPA gets a
    transposed view, so neither kernel forces a copy of q/k/v.
    """
    if resolve_backend(q.device) == "xformers":
        return _xformers_ops().memory_efficient_attention(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention (MHSA, Eqs. 5-7) with a fused qkv projection.

    The bias is BEiT-style: learnable ``q_bias`` and ``v_bias`` with the key bias fixed at zero, so the
    state-dict keys (``qkv.weight``, ``q_bias``, ``v_bias``, ``proj.*``) equal the official ones.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.unbind(2)
        return self.proj(attention(q, k, v).reshape(b, n, c))


class GeneralAttention(nn.Module):
    """Multi-head attention whose keys/values may come from another sequence (MHCA, Eqs. 9, 10, 14, 19).

    Used for self-attention too (context = queries) inside the LGI block, as the official code does;
    separate ``q`` and joint ``kv`` projections keep the official parameter names.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape
        m = context.shape[1]
        h, d = self.num_heads, c // self.num_heads
        q = F.linear(x, self.q.weight, self.q_bias).view(b, n, h, d)
        kv_bias = torch.cat((torch.zeros_like(self.v_bias), self.v_bias))
        k, v = F.linear(context, self.kv.weight, kv_bias).view(b, m, 2, h, d).unbind(2)
        return self.proj(attention(q, k, v).reshape(b, n, c))
