"""AVF-MAE++ pre-training model (paper §3.1-3.3, Fig. 2a) and the HiCMAE-B baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import InputSpec, ModelConfig
from .decoder import Decoder
from .encoder import LGIEncoder, ViTEncoder
from .fusion import IAVCL, CSFusion
from .layers import init_linear_xavier, sinusoid_table, trunc_normal_clipped_
from .losses import audio_target, hcmcl_loss, masked_mse, video_target
from .masking import PretrainMaskGenerator, PretrainMasks, visible_indices


@dataclass
class PretrainOutput:
    """Result of one pre-training forward.

    ``loss`` = ``loss_video`` + ``loss_audio`` + contrastive_weight * ``loss_contrastive`` (Eq. 1), where
    ``loss_contrastive`` is the unweighted HCMCL sum over the selected layers.  Predictions are the
    decoder outputs at the decoder-visible positions in raster order: video (B, N_dec, 1536), audio
    (B, N_dec_a, 256).  Also indexable like a dict (``out["loss"]``).
    """

    loss: torch.Tensor
    loss_video: torch.Tensor
    loss_audio: torch.Tensor
    loss_contrastive: torch.Tensor
    pred_video: torch.Tensor
    pred_audio: torch.Tensor
    masks: PretrainMasks

    def __getitem__(self, key: str):
        return getattr(self, key)

    def losses(self) -> dict[str, torch.Tensor]:
        """The four scalar losses, handy for logging."""
        return {k: getattr(self, k) for k in ("loss", "loss_video", "loss_audio", "loss_contrastive")}


class AVFMAEPretrain(nn.Module):
    """Audio-visual MAE with dual masking, LGI-Former encoders, IAV-CL fusion and skip decoders.

    forward(video (B,3,16,160,160) normalised, audio (B,1,256,128) fbank, masks=None) -> PretrainOutput.
    With ``config.encoder_type="vit"``, ``fusion_type="csblock"`` and ``decoder_masking=False`` the same
    class is the HiCMAE-B baseline.  Top-level attribute names equal the official checkpoint keys.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config.validate()
        enc_cls = LGIEncoder if c.encoder_type == "lgi" else ViTEncoder
        fus_cls = IAVCL if c.fusion_type == "iavcl" else CSFusion
        dd = c.decoder_embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.mask_token_audio = nn.Parameter(torch.zeros(1, 1, dd))
        self.encoder = enc_cls(c, "video")
        self.encoder_audio = enc_cls(c, "audio")
        self.encoder_fusion = fus_cls(c.embed_dim, c.fusion_num_heads, c.fusion_depth, c.mlp_ratio, c.drop_path_rate)
        video_out = c.tubelet_size * c.patch_size**2 * 3
        audio_out = c.audio_patch_size**2
        self.decoder = Decoder(dd, c.decoder_depth, c.decoder_num_heads, video_out, c.mlp_ratio)
        self.decoder_audio = Decoder(dd, c.decoder_depth, c.decoder_num_heads, audio_out, c.mlp_ratio)
        self.encoder_to_decoder = nn.Linear(c.embed_dim, dd, bias=False)
        self.encoder_to_decoder_audio = nn.Linear(c.embed_dim, dd, bias=False)
        self.register_buffer("decoder_pos_embed", sinusoid_table(c.num_patches, dd), persistent=False)
        self.register_buffer("decoder_pos_embed_audio", sinusoid_table(c.num_patches_audio, dd), persistent=False)
        self.mask_generator = PretrainMaskGenerator(c)
        self.init_weights()

    @property
    def input_spec(self) -> InputSpec:
        """Expected per-sample input shapes (frames, image size, audio frames, mel bins)."""
        return self.config.input_spec

    def init_weights(self) -> None:
        """Official init: xavier Linear / unit LN everywhere; the encoder-to-decoder
        projections, patch convolutions and ER conv stacks keep PyTorch defaults; tokens trunc-normal."""
        if any(p.is_meta for p in self.parameters()):
            return
        self.apply(init_linear_xavier)
        self.encoder_to_decoder.reset_parameters()
        self.encoder_to_decoder_audio.reset_parameters()
        trunc_normal_clipped_(self.mask_token)
        trunc_normal_clipped_(self.mask_token_audio)
        self.encoder.init_weights()
        self.encoder_audio.init_weights()

    def generate_masks(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> PretrainMasks:
        return self.mask_generator(batch, generator=generator, device=device)

    def _decoder_input(
        self,
        feats: torch.Tensor,
        skips: list[torch.Tensor],
        vis_idx: torch.Tensor,
        dec_idx: torch.Tensor,
        proj: nn.Linear,
        pos: torch.Tensor,
        mask_token: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pos = pos.to(feats.dtype)
        pos_vis = pos[vis_idx]  # (B, N_vis, Cd), raster-order positions, as the official decoder input
        x_vis = proj(feats) + pos_vis
        x_mask = mask_token.to(x_vis.dtype) + pos[dec_idx].to(x_vis.dtype)
        skips_d = [proj(s) + pos_vis for s in skips]
        return torch.cat((x_vis, x_mask), dim=1), skips_d

    def _check_masks(self, masks: PretrainMasks, batch: int) -> None:
        """Visible counts must equal the config's static counts (token grouping depends on them).

        Uses ``torch._assert_async``: it raises at once on CPU and without a host sync on CUDA (a device
        assert), and it compiles into the graph.
        """
        c = self.config
        expected = (
            (masks.video, c.num_patches - c.num_visible, "video"),
            (masks.audio, c.num_patches_audio - c.num_visible_audio, "audio"),
            (masks.video_decoder, c.num_patches - c.num_decode, "video_decoder"),
            (masks.audio_decoder, c.num_patches_audio - c.num_decode_audio, "audio_decoder"),
        )
        for m, hidden, name in expected:
            if m.shape[0] != batch or m.dim() != 2:
                raise ValueError(f"mask {name} has shape {tuple(m.shape)}, expected ({batch}, N)")
            torch._assert_async(
                (m.sum(dim=1) == hidden).all(), f"mask {name}: every sample must hide exactly {hidden} tokens"
            )

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        masks: PretrainMasks | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        c = self.config
        b = video.shape[0]
        if masks is None:
            masks = self.generate_masks(b, device=video.device, generator=generator)
        self._check_masks(masks, b)
        vis_v = visible_indices(masks.video, c.num_visible)
        vis_a = visible_indices(masks.audio, c.num_visible_audio)
        dec_v = visible_indices(masks.video_decoder, c.num_decode)
        dec_a = visible_indices(masks.audio_decoder, c.num_decode_audio)

        # modality encoders on the encoder-visible tokens
        feat_v, skips_v = self.encoder.forward_pretrain(video, vis_v)
        feat_a, skips_a = self.encoder_audio.forward_pretrain(audio, vis_a)
        # cross-modal fusion (IAV-CL); X0 = [mean V; mean A]
        x0 = torch.cat((feat_v.mean(dim=1, keepdim=True), feat_a.mean(dim=1, keepdim=True)), dim=-1)
        fused_v, fused_a, *_ = self.encoder_fusion(feat_v, feat_a, x0)

        # decoders: encoder-visible tokens + [MASK] queries at decoder-visible positions (Eq. 2)
        xv, sv = self._decoder_input(
            fused_v, skips_v, vis_v, dec_v, self.encoder_to_decoder, self.decoder_pos_embed, self.mask_token
        )
        xa, sa = self._decoder_input(
            fused_a,
            skips_a,
            vis_a,
            dec_a,
            self.encoder_to_decoder_audio,
            self.decoder_pos_embed_audio,
            self.mask_token_audio,
        )
        pred_v = self.decoder(xv, sv, c.num_decode)
        pred_a = self.decoder_audio(xa, sa, c.num_decode_audio)

        # reconstruction losses on decoder-visible tokens that the encoder did not see (Eq. 3)
        tgt_v = video_target(video, c.patch_size, c.tubelet_size, c.frame_diff_target)
        tgt_a = audio_target(audio, c.audio_patch_size)
        lab_v = torch.gather(tgt_v, 1, dec_v[..., None].expand(-1, -1, tgt_v.shape[-1]))
        lab_a = torch.gather(tgt_a, 1, dec_a[..., None].expand(-1, -1, tgt_a.shape[-1]))
        loss_v = masked_mse(pred_v, lab_v, torch.gather(masks.video, 1, dec_v))
        loss_a = masked_mse(pred_a, lab_a, torch.gather(masks.audio, 1, dec_a))
        # HCMCL on the pre-fusion skip features (Eq. 1)
        loss_c = hcmcl_loss(skips_v, skips_a, c.contrastive_temperature)
        loss = loss_v + loss_a + c.contrastive_weight * loss_c
        return PretrainOutput(loss, loss_v, loss_a, loss_c, pred_v, pred_a, masks)

    def extra_repr(self) -> str:
        return f"config={self.config.name}"
