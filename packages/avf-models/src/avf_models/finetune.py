"""AVF-MAE++ fine-tuning model (paper §3.3-3.4): encoders + IAV-CL + fc_norm + head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import InputSpec, ModelConfig
from .encoder import LGIEncoder
from .fusion import IAVCL
from .layers import init_linear_xavier, layer_norm

_ACTIVATIONS = {"identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


class AVFMAEFinetune(nn.Module):
    """Classifier/regressor on top of the pre-trained encoders.

    ``modality="av"`` (official): both encoders return per-layer region tokens (B, K, L, C); X0 of
    Eq. (11) is [sum_l a^v_l F^v_l ; sum_l a^a_l F^a_l] with softmax-normalised learnable layer weights
    (video first, as in the code); IAV-CL fuses the last layer's region tokens; the fused tokens are
    mean-pooled, concatenated [video; audio], LN'ed (``fc_norm``) and classified (``head``).

    ``modality="video"`` / ``"audio"`` (e.g. micro-expressions, video only): one encoder, the
    layer-weighted region tokens are mean-pooled, then fc_norm(C) and head.  These variants are not in
    the official release; their backbone keys still load from the official checkpoints.

    ``task="regression"`` applies ``head_activation`` after the head (as HiCMAE's regression script does;
    the official AVF-MAE++ release has no regression path) and ``compute_loss`` uses MSE;
    classification uses cross-entropy (hard labels or soft/mixup targets).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config.validate()
        if c.encoder_type != "lgi" or c.fusion_type != "iavcl":
            raise ValueError(
                f"no fine-tuning model for encoder {c.encoder_type!r} + fusion {c.fusion_type!r}: "
                "fine-tuning is defined for AVF-MAE++ (LGI encoders + IAV-CL); hicmae_base is pre-training only"
            )
        dim = c.embed_dim
        if c.modality in ("av", "video"):
            self.layer_weights_video = nn.Parameter(torch.full((c.depth,), 1.0 / c.depth))
            self.encoder = LGIEncoder(c, "video")
        if c.modality in ("av", "audio"):
            self.layer_weights_audio = nn.Parameter(torch.full((c.depth_audio,), 1.0 / c.depth_audio))
            self.encoder_audio = LGIEncoder(c, "audio")
        if c.modality == "av":
            self.encoder_fusion = IAVCL(dim, c.fusion_num_heads, c.fusion_depth, c.mlp_ratio, c.drop_path_rate)
        feat_dim = 2 * dim if c.modality == "av" else dim
        self.fc_norm = layer_norm(feat_dim)
        self.fc_dropout = nn.Dropout(c.fc_drop_rate)
        self.head = nn.Linear(feat_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.head_activation = _ACTIVATIONS[c.head_activation]()
        self.init_weights()

    @property
    def input_spec(self) -> InputSpec:
        return self.config.input_spec

    def init_weights(self) -> None:
        """Backbone init as in pre-training; fc_norm/head keep PyTorch defaults like the official code.
        In practice the backbone is overwritten by ``load_pretrained_into_finetune``."""
        if any(p.is_meta for p in self.parameters()):
            return
        for name in ("encoder", "encoder_audio", "encoder_fusion"):
            mod = getattr(self, name, None)
            if mod is not None:
                mod.apply(init_linear_xavier)
                if hasattr(mod, "init_weights"):
                    mod.init_weights()

    @staticmethod
    def _weighted(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_l softmax(w)_l F_l over the layer axis of (B, K, L, C)."""
        return torch.einsum("bklc,l->bkc", feats, weights.softmax(dim=0).to(feats.dtype))

    def forward_features(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled feature before fc_norm: (B, 2C) for "av", (B, C) for single-modality variants."""
        m = self.config.modality
        if m == "av":
            if video is None or audio is None:
                raise ValueError("the audio-visual model needs both video and audio")
            fv = self.encoder.forward_regions(video)  # (B, K, L, C)
            fa = self.encoder_audio.forward_regions(audio)
            x0 = torch.cat(
                (self._weighted(fv, self.layer_weights_video), self._weighted(fa, self.layer_weights_audio)), dim=-1
            )  # Eq. (11)
            v4, a4, *_ = self.encoder_fusion(fv[:, :, -1], fa[:, :, -1], x0)
            return torch.cat((v4.mean(dim=1), a4.mean(dim=1)), dim=-1)
        if m == "video":
            if video is None:
                raise ValueError("the video-only model needs video")
            return self._weighted(self.encoder.forward_regions(video), self.layer_weights_video).mean(dim=1)
        if audio is None:
            raise ValueError("the audio-only model needs audio")
        return self._weighted(self.encoder_audio.forward_regions(audio), self.layer_weights_audio).mean(dim=1)

    def forward(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes) for classification, activated outputs for regression.

        Single-modality models accept their input positionally: ``model(video)`` or ``model(audio)``
        (a (B,1,256,128) tensor passed first to an audio model is taken as audio).
        """
        if self.config.modality == "audio" and audio is None:
            video, audio = None, video
        feat = self.fc_norm(self.forward_features(video, audio))
        return self.head_activation(self.head(self.fc_dropout(feat)))

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (int labels or soft targets) for classification, MSE for regression."""
        if self.config.task == "regression":
            return F.mse_loss(outputs.float(), targets.float().view_as(outputs))
        if targets.dtype.is_floating_point:
            return torch.sum(-targets * F.log_softmax(outputs.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(outputs.float(), targets)
