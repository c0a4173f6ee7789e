"""Shared helpers for the avf-models tests (fixtures are copies of the official key/shape lists)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"

# (fixture stem, our model name, stage) for every official key list
OFFICIAL = [
    ("avfmaepp_B_pretrain", "avfmae_pp_base", "pretrain"),
    ("avfmaepp_L_pretrain", "avfmae_pp_large", "pretrain"),
    ("avfmaepp_H_pretrain", "avfmae_pp_huge", "pretrain"),
    ("avfmaepp_B_finetune_nc11", "avfmae_pp_base", "finetune"),
    ("avfmaepp_L_finetune_nc11", "avfmae_pp_large", "finetune"),
    ("avfmaepp_H_finetune_nc11", "avfmae_pp_huge", "finetune"),
    ("hicmae_B_pretrain", "hicmae_base", "pretrain"),
]


def official_keys(stem: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(s)) for k, s in json.loads((FIXTURES / f"{stem}.json").read_text())]


def param_counts() -> dict:
    return json.loads((FIXTURES / "param_counts.json").read_text())


def fake_official_state_dict(stem: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the official names and shapes.  Each tensor is one random scalar broadcast to
    the shape (stride-0 view), so files stay tiny but every key carries a distinguishable value."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in official_keys(stem):
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.randint(0, 1000, (), generator=g)
        else:
            sd[k] = torch.randn(1, generator=g).reshape([1] * len(s)).expand(s) if s else torch.randn((), generator=g)
    return sd
