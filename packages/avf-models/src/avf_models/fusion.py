"""Cross-modal fusion encoders.

* ``IAVCL``: the AVF-MAE++ Iterative Audio-Visual Correlations Learning module (paper §3.4) =
  2 x ``DiERUnit`` + one shared ``ERLayer`` + ``HAFELayer``.  The official code uses it as the fusion
  encoder in pre-training *and* fine-tuning.
* ``CSFusion``: the HiCMAE fusion encoder (per-modality cross-then-self blocks), for the baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, GeneralAttention
from .layers import CSBlock, DropPath, Mlp, drop_path_rates, layer_norm


class DiERUnit(nn.Module):
    """Dense-interaction part of a DiER unit (Eqs. 12-14), plus the FFNs and output LN of the code.

    Self- and cross-attention branches run in parallel on the same inputs; per-channel sigmoid gates
    computed from their concatenation mix them, and a LayerNorm closes the unit.  The official
    ``norm3`` (video output LN) is the line lost from the released code; it is present here and in the
    released checkpoints.  Attribute names equal the official keys.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        # cross-attention branch (Eq. 14), one per direction
        self.cross_attn = GeneralAttention(dim, num_heads)
        self.cross_norm1 = layer_norm(dim)
        self.cross_norm2 = layer_norm(dim)
        self.cross_attn_a = GeneralAttention(dim, num_heads)
        self.cross_norm1_a = layer_norm(dim)
        self.cross_norm2_a = layer_norm(dim)
        # self-attention branch (Eq. 13)
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm_new = layer_norm(dim)
        self.attn_new = Attention(dim, num_heads)
        # FFN after each of the four attention outputs (not in the paper's equations)
        self.norm_vsa, self.mlp_vsa = layer_norm(dim), Mlp(dim, hidden)
        self.norm_asa, self.mlp_asa = layer_norm(dim), Mlp(dim, hidden)
        self.norm_vcma, self.mlp_vcma = layer_norm(dim), Mlp(dim, hidden)
        self.norm_acma, self.mlp_acma = layer_norm(dim), Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path)
        # output LNs and channel gates (Eq. 12)
        self.norm3 = layer_norm(dim)
        self.norm3_1 = layer_norm(dim)
        self.lv1 = nn.Linear(2 * dim, dim)
        self.lv2 = nn.Linear(2 * dim, dim)
        self.la1 = nn.Linear(2 * dim, dim)
        self.la2 = nn.Linear(2 * dim, dim)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dp = self.drop_path
        # Eq. (13): F^s_m = MHSA(LN(F^1_m)) + F^1_m, then FFN
        v_s = v + dp(self.attn(self.norm1(v)))
        v_s = v_s + dp(self.mlp_vsa(self.norm_vsa(v_s)))
        a_s = a + dp(self.attn_new(self.norm_new(a)))
        a_s = a_s + dp(self.mlp_asa(self.norm_asa(a_s)))
        # Eq. (14): F^c_m = MHCA(LN(F^1_m), LN(F^1_other)) + F^1_m, then FFN
        v_c = v + dp(self.cross_attn(self.cross_norm1(v), self.cross_norm2(a)))
        v_c = v_c + dp(self.mlp_vcma(self.norm_vcma(v_c)))
        a_c = a + dp(self.cross_attn_a(self.cross_norm1_a(a), self.cross_norm2_a(v)))
        a_c = a_c + dp(self.mlp_acma(self.norm_acma(a_c)))
        # Eq. (12): sigmoid channel gates from [F^s; F^c], then LN
        v_sc = torch.cat((v_s, v_c), dim=-1)
        a_sc = torch.cat((a_s, a_c), dim=-1)
        v_out = self.norm3(torch.sigmoid(self.lv1(v_sc)) * v_s + torch.sigmoid(self.lv2(v_sc)) * v_c)
        a_out = self.norm3_1(torch.sigmoid(self.la1(a_sc)) * a_s + torch.sigmoid(self.la2(a_sc)) * a_c)
        return v_out, a_out


def _conv_bn_prelu(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(dim, dim, kernel_size=1), nn.BatchNorm1d(dim), nn.PReLU())


class ERLayer(nn.Module):
    """Evolutionary Refinement layer (Eqs. 15-16); one instance is shared by all DiER units.

    The multi-modal feature X attends (single head, no projections) to each modality's unit output;
    a 1x1 Conv + BatchNorm + PReLU turns each result into a residual, and X <- LN(X + R_a + R_v).  On the
    first call X has width 2C and is first projected to C (``post_extract_proj``).  The LN uses eps 1e-5
    (a plain ``nn.LayerNorm``) as in the official code.  BatchNorm statistics are batch-wide: in
    pre-training X has one token per sample, so batch size 1 cannot train this layer.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.post_extract_proj = nn.Linear(2 * dim, dim)
        self.conv_audio = _conv_bn_prelu(dim)
        self.conv_video = _conv_bn_prelu(dim)
        self.layer_norm = nn.LayerNorm(dim)

    def _residual(self, x: torch.Tensor, m: torch.Tensor, conv: nn.Sequential) -> torch.Tensor:
        # SHCA, Eq. (15): softmax(X M^T / sqrt(C)) M.  Always SDPA: head dim C can exceed what
        # memory-efficient kernels accept, and the sequence here is tiny.
        att = F.scaled_dot_product_attention(x, m, m)
        return conv(att.transpose(1, 2)).transpose(1, 2)

    def forward(self, a: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 2 * self.dim:  # F^0_av -> F^1_av
            x = self.post_extract_proj(x)
        r_a = self._residual(x, a, self.conv_audio)
        r_v = self._residual(x, v, self.conv_video)
        return self.layer_norm(x + r_a + r_v)  # Eq. (16)


class HAFELayer(nn.Module):
    """Hierarchical Aggregation and Feedback Enhancement (Eqs. 17-19).

    Per token, the outputs of the U DiER units form a length-U sequence: MHSA + FFN over it (Eq. 17),
    sigmoid-weighted sum over units (Eq. 18), then a feedback cross-attention to the final multi-modal
    feature X + FFN (Eq. 19).  The cross-attention and its context LN are shared by the two modalities.
    Attribute names equal the official ``encoder_fusion.*`` names.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = layer_norm(dim)
        self.norm_audio = layer_norm(dim)
        self.vadaptiveinteraction = Attention(dim, num_heads)
        self.aadaptiveinteraction = Attention(dim, num_heads)
        self.norm_att_v, self.mlp_att_v = layer_norm(dim), Mlp(dim, hidden)
        self.norm_att_a, self.mlp_att_a = layer_norm(dim), Mlp(dim, hidden)
        self.vselectfusion = nn.Linear(dim, 1)
        self.aselectfusion = nn.Linear(dim, 1)
        self.cross_attn = GeneralAttention(dim, num_heads)
        self.cross_norm_1 = layer_norm(dim)  # video query LN
        self.cross_norm_2 = layer_norm(dim)  # shared context LN
        self.cross_norm_3 = layer_norm(dim)  # audio query LN
        self.norm_att_v_IR, self.mlp_att_video_IR = layer_norm(dim), Mlp(dim, hidden)
        self.norm_att_a_IR, self.mlp_att_audio_IR = layer_norm(dim), Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path)

    def _aggregate(
        self,
        units: list[torch.Tensor],
        norm: nn.Module,
        attn: nn.Module,
        norm_ff: nn.Module,
        mlp: nn.Module,
        select: nn.Module,
    ) -> torch.Tensor:
        b, n, c = units[0].shape
        s = torch.stack(units, dim=2).reshape(b * n, len(units), c)
        h = s + self.drop_path(attn(norm(s)))  # Eq. (17)
        h = h + self.drop_path(mlp(norm_ff(h)))
        return (torch.sigmoid(select(h)) * h).sum(dim=1).view(b, n, c)  # Eq. (18)

    def forward(
        self, v_units: list[torch.Tensor], a_units: list[torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v3 = self._aggregate(
            v_units, self.norm, self.vadaptiveinteraction, self.norm_att_v, self.mlp_att_v, self.vselectfusion
        )
        a3 = self._aggregate(
            a_units, self.norm_audio, self.aadaptiveinteraction, self.norm_att_a, self.mlp_att_a, self.aselectfusion
        )
        ctx = self.cross_norm_2(x)
        v4 = v3 + self.drop_path(self.cross_attn(self.cross_norm_1(v3), ctx))  # Eq. (19)
        v4 = v4 + self.drop_path(self.mlp_att_video_IR(self.norm_att_v_IR(v4)))
        a4 = a3 + self.drop_path(self.cross_attn(self.cross_norm_3(a3), ctx))
        a4 = a4 + self.drop_path(self.mlp_att_audio_IR(self.norm_att_a_IR(a4)))
        return v4, a4


class IAVCL(nn.Module):
    """IAV-CL module: DiER units (dense interaction) each followed by the shared ER layer, then HAFE.

    forward(V, A, X0) -> (F4_v, F4_a, X_final, v_units, a_units).  Pre-training passes the visible
    tokens and X0 = [mean V; mean A] (B, 1, 2C); fine-tuning passes the last layer's region tokens and
    the layer-weighted X0 of Eq. (11) (B, K, 2C).  The video part always comes first in X0.
    """

    def __init__(
        self, dim: int, num_heads: int, depth: int = 2, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(DiERUnit(dim, num_heads, mlp_ratio, dpr[i]) for i in range(depth))
        self.er = ERLayer(dim)
        self.hafe = HAFELayer(dim, num_heads, mlp_ratio, 0.5 * drop_path_rate)

    def forward(
        self, v: torch.Tensor, a: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        v_units, a_units = [], []
        for blk in self.blocks:
            v, a = blk(v, a)
            x = self.er(a, v, x)
            v_units.append(v)
            a_units.append(a)
        v4, a4 = self.hafe(v_units, a_units, x)
        return v4, a4, x, v_units, a_units


class CSFusion(nn.Module):
    """HiCMAE fusion encoder: per layer, video and audio each run a CSBlock with the other modality as
    context (both from the previous layer), then a final LN per modality."""

    def __init__(
        self, dim: int, num_heads: int, depth: int = 2, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(CSBlock(dim, num_heads, mlp_ratio, dpr[i]) for i in range(depth))
        self.blocks_audio = nn.ModuleList(CSBlock(dim, num_heads, mlp_ratio, dpr[i]) for i in range(depth))
        self.norm = layer_norm(dim)
        self.norm_audio = layer_norm(dim)

    def forward(
        self, v: torch.Tensor, a: torch.Tensor, x: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, None, list[torch.Tensor], list[torch.Tensor]]:
        for blk, blk_a in zip(self.blocks, self.blocks_audio, strict=False):
            v, a = blk(v, a), blk_a(a, v)
        return self.norm(v), self.norm_audio(a), None, [], []
