"""Modality encoders: the improved LGI-Former (AVF-MAE++, paper §3.3) and a vanilla ViT (HiCMAE)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import GeneralAttention
from .config import ModelConfig
from .embeddings import AudioPatchEmbed, CubeEmbed
from .layers import Block, DropPath, Mlp, drop_path_rates, layer_norm, sinusoid_table, trunc_normal_clipped_


class LGIBlock(nn.Module):
    """One improved LGI-Former layer (stages I-IV + FFN).

    Input/output (B, K, 1+Z, C): K regions, each holding its region token at slot 0 followed by its Z
    local tokens.  All regions and samples go through each stage as one batched tensor; there are no
    Python loops over regions.

    As in the official code, stage III lets *every* local token of a sample attend to
    all K region tokens, and stage IV lets every region token attend to all local tokens of the sample,
    rather than the per-region form written in Eqs. (9)-(10).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.first_attn_norm0 = layer_norm(dim)
        self.first_attn = GeneralAttention(dim, num_heads)
        self.second_attn_norm0 = layer_norm(dim)
        self.second_attn = GeneralAttention(dim, num_heads)
        self.third_attn_norm0 = layer_norm(dim)
        self.third_attn_norm1 = layer_norm(dim)
        self.third_attn = GeneralAttention(dim, num_heads)
        self.fourth_attn_norm0 = layer_norm(dim)
        self.fourth_attn_norm1 = layer_norm(dim)
        self.fourth_attn = GeneralAttention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, n, c = x.shape
        # Stage I, Eq. (4): local intra-region MHSA over [S_i; X_i], all B*K regions in one batch.
        h = x.reshape(b * k, n, c)
        h = h + self.drop_path(self.first_attn(self.first_attn_norm0(h)))
        h = h.view(b, k, n, c)
        # Stage II, Eq. (8): global MHSA among the K region tokens of each sample.
        s = h[:, :, 0]
        s = s + self.drop_path(self.second_attn(self.second_attn_norm0(s)))
        # Stage III, Eq. (9): local tokens (all regions of the sample) attend to the region tokens.
        loc = h[:, :, 1:].reshape(b, k * (n - 1), c)
        loc = loc + self.drop_path(self.third_attn(self.third_attn_norm0(loc), self.third_attn_norm1(s)))
        # Stage IV, Eq. (10): region tokens attend back to the updated local tokens.
        s = s + self.drop_path(self.fourth_attn(self.fourth_attn_norm0(s), self.fourth_attn_norm1(loc)))
        x = torch.cat((s.unsqueeze(2), loc.view(b, k, n - 1, c)), dim=2)
        # FFN on every token (region and local).
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LGIEncoder(nn.Module):
    """Improved LGI-Former encoder for one modality (video or audio).

    * ``forward_pretrain`` runs on the encoder-visible tokens only and returns LN(local tokens) plus
      LN'ed intermediate features at ``skip_layers`` (for the decoders' skips and HCMCL).
    * ``forward_regions`` runs on all tokens (fine-tuning) and returns the region tokens of every layer,
      stacked and LN'ed, shape (B, K, L, C) -- the per-layer features F_m of Eq. (11).

    Grouping visible tokens into regions during pre-training follows the official code, which splits
    them *positionally*: video slots are paired in time and each slot's visible tokens
    (raster order) are cut into equal chunks; audio tokens are cut into K chunks of consecutive tokens.
    The output stays region-major, like the official encoder, unless ``restore_token_order`` is set.
    """

    def __init__(self, config: ModelConfig, modality: str) -> None:
        super().__init__()
        c = config
        self.modality = modality
        self.skip_layers = tuple(c.skip_layers)
        self.restore_token_order = c.restore_token_order
        dim = c.embed_dim
        if modality == "video":
            self.patch_embed: nn.Module = CubeEmbed(dim, c.num_frames, c.image_size, c.patch_size, c.tubelet_size)
            depth, num_patches, num_regions = c.depth, c.num_patches, c.num_regions
            t, h, w = c.grid
            rt, rh, rw = c.region_size
            self._region = dict(nt=t // rt, t=rt, nh=h // rh, h=rh, nw=w // rw, w=rw)
            self._pre = dict(nt=t // rt, t=rt, nhw=(h // rh) * (w // rw))
        else:
            self.patch_embed = AudioPatchEmbed(dim, c.audio_frames, c.mel_bins, c.audio_patch_size)
            depth, num_patches, num_regions = c.depth_audio, c.num_patches_audio, c.num_regions_audio
            t, f = c.grid_audio
            rt, rf = c.region_size_audio
            self._region = dict(nt=t // rt, t=rt, nf=f // rf, f=rf)
            self._pre = dict(k=num_regions)
        self.depth = depth
        self.num_regions = num_regions
        self.lg_region_tokens = nn.Parameter(torch.zeros(num_regions, dim))
        self.register_buffer("pos_embed", sinusoid_table(num_patches, dim), persistent=False)
        dpr = drop_path_rates(c.drop_path_rate, depth)
        self.blocks = nn.ModuleList(LGIBlock(dim, c.num_heads, c.mlp_ratio, dpr[i]) for i in range(depth))
        self.norm = layer_norm(dim)

    def init_weights(self) -> None:
        trunc_normal_clipped_(self.lg_region_tokens)

    # -- region grouping ------------------------------------------------------------------------
    def _group_all(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) on the full grid -> (B, K, Z, C) true spatial(-temporal) regions."""
        if self.modality == "video":
            return rearrange(x, "b (nt t nh h nw w) c -> b (nt nh nw) (t h w) c", **self._region)
        return rearrange(x, "b (nt t nf f) c -> b (nt nf) (t f) c", **self._region)

    def _group_visible(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N_vis, C) visible tokens in raster order -> (B, K, Z_vis, C), official positional split."""
        if self.modality == "video":
            return rearrange(x, "b (nt t nhw hw) c -> b (nt nhw) (t hw) c", **self._pre)
        return rearrange(x, "b (k z) c -> b k z c", **self._pre)

    def _ungroup_visible(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, Z_vis, C) -> (B, N_vis, C), region-major (official) or raster order (restored)."""
        if not self.restore_token_order or self.modality == "audio":
            return x.flatten(1, 2)
        return rearrange(x, "b (nt nhw) (t hw) c -> b (nt t nhw hw) c", **self._pre)

    def _with_region_tokens(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        s = self.lg_region_tokens.to(x.dtype)[None, :, None, :].expand(b, -1, 1, -1)
        return torch.cat((s, x), dim=2)

    # -- forwards -------------------------------------------------------------------------------
    def forward_pretrain(self, x: torch.Tensor, vis_idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: raw input; vis_idx (B, N_vis) ascending visible indices -> (LN(out) (B,N_vis,C), skips)."""
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        c = x.shape[-1]
        x = torch.gather(x, 1, vis_idx[..., None].expand(-1, -1, c))
        x = self._with_region_tokens(self._group_visible(x))
        skips: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.skip_layers:
                skips.append(self.norm(self._ungroup_visible(x[:, :, 1:])))
        out = (
            skips[-1]
            if self.skip_layers and self.skip_layers[-1] == self.depth - 1
            else self.norm(self._ungroup_visible(x[:, :, 1:]))
        )
        return out, skips

    def forward_regions(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens -> stacked region tokens of every layer after the shared LN, (B, K, L, C)."""
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        x = self._with_region_tokens(self._group_all(x))
        regions = []
        for blk in self.blocks:
            x = blk(x)
            regions.append(x[:, :, 0])
        return self.norm(torch.stack(regions, dim=2))


class ViTEncoder(nn.Module):
    """Vanilla ViT encoder on visible tokens (HiCMAE baseline); same output contract as LGIEncoder."""

    def __init__(self, config: ModelConfig, modality: str) -> None:
        super().__init__()
        c = config
        dim = c.embed_dim
        if modality == "video":
            self.patch_embed: nn.Module = CubeEmbed(dim, c.num_frames, c.image_size, c.patch_size, c.tubelet_size)
            depth, num_patches = c.depth, c.num_patches
        else:
            self.patch_embed = AudioPatchEmbed(dim, c.audio_frames, c.mel_bins, c.audio_patch_size)
            depth, num_patches = c.depth_audio, c.num_patches_audio
        self.depth = depth
        self.skip_layers = tuple(c.skip_layers)
        self.register_buffer("pos_embed", sinusoid_table(num_patches, dim), persistent=False)
        dpr = drop_path_rates(c.drop_path_rate, depth)
        self.blocks = nn.ModuleList(Block(dim, c.num_heads, c.mlp_ratio, dpr[i]) for i in range(depth))
        self.norm = layer_norm(dim)

    def init_weights(self) -> None:
        pass

    def forward_pretrain(self, x: torch.Tensor, vis_idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        x = torch.gather(x, 1, vis_idx[..., None].expand(-1, -1, x.shape[-1]))
        skips: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.skip_layers:
                skips.append(self.norm(x))
        return self.norm(x), skips
