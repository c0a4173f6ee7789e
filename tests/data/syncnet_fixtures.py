"""Random SyncNet v2 weights in the official ``syncnet_v2.model`` format, for tests.

No official weights exist offline; these state dicts have the official key names and
shapes (what ``torch.save`` of the official network's state dict holds, without
``num_batches_tracked``) and go through the real loader.
"""

from __future__ import annotations

import numpy as np
import torch

from avf_data.stages import syncnet as sn


def random_official_state_dict(seed: int = 0, embedding_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Name -> tensor with the official layout. ``embedding_scale`` multiplies the last
    layer of both branches: 0.01 brings embedding distances to the ~5-15 range that the
    real model gives (1.0: ~1000)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in sn.OFFICIAL_STATE_DICT_SHAPES.items():
        if k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean") or k.endswith("bias"):
            sd[k] = torch.randn(shape, generator=g) * 0.1
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            sd[k] = (
                torch.randn(shape, generator=g) / np.sqrt(fan_in)
                if len(shape) > 1
                else 1 + 0.1 * torch.randn(shape, generator=g)
            )
    for k in ("netfcaud.3.weight", "netfcaud.3.bias", "netfclip.3.weight", "netfclip.3.bias"):
        sd[k] = sd[k] * embedding_scale
    return sd


def write_weights(path, seed: int = 0, embedding_scale: float = 0.01):
    torch.save(random_official_state_dict(seed, embedding_scale), path)
    return path
