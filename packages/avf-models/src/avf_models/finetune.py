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

    def _pooled(
        self, video: torch.Tensor | None, audio: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The pooled feature before fc_norm and, per present modality, its pre-fusion vector.

        Both come from one pass through the encoders, so ``embed`` costs what ``forward`` does. The
        per-modality vector is the layer-weighted region tokens sum_l softmax(a)_l F_l (a half of X0,
        Eq. (11)) mean-pooled over the regions: exactly the feature a single-modality model pools.
        """
        m = self.config.modality
        if m == "av" and (video is None or audio is None):
            raise ValueError("the audio-visual model needs both video and audio")
        if m == "video" and video is None:
            raise ValueError("the video-only model needs video")
        if m == "audio" and audio is None:
            raise ValueError("the audio-only model needs audio")
        regions: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        if m in ("av", "video"):
            regions["video"] = self.encoder.forward_regions(video)  # (B, K, L, C)
            weighted["video"] = self._weighted(regions["video"], self.layer_weights_video)
        if m in ("av", "audio"):
            regions["audio"] = self.encoder_audio.forward_regions(audio)
            weighted["audio"] = self._weighted(regions["audio"], self.layer_weights_audio)
        parts = {name: w.mean(dim=1) for name, w in weighted.items()}
        if m != "av":
            return parts[m], parts
        x0 = torch.cat((weighted["video"], weighted["audio"]), dim=-1)  # Eq. (11), video first
        v4, a4, *_ = self.encoder_fusion(regions["video"][:, :, -1], regions["audio"][:, :, -1], x0)
        return torch.cat((v4.mean(dim=1), a4.mean(dim=1)), dim=-1), parts

    def forward_features(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled feature before fc_norm: (B, 2C) for "av", (B, C) for single-modality variants."""
        return self._pooled(video, audio)[0]

    def embed(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Clip embeddings, for users who want features rather than logits (probing, retrieval).

        Returns ``{"video": (B, C), "audio": (B, C), "fused": (B, D)}``; a single-modality model
        returns its own modality and ``fused`` only. ``video``/``audio`` are pre-fusion: each
        encoder's layer-weighted region tokens (its half of X0, Eq. (11)) mean-pooled over the
        regions. ``fused`` is the vector the head sees: fc_norm of the pooled [video; audio]
        tokens that IAV-CL (paper §3.3-3.4) returns (D = 2C), or of the one modality's vector
        (D = C). So in eval mode ``head_activation(head(embed(v, a)["fused"])) == model(v, a)``;
        in train mode the head also sees ``fc_dropout``. Inputs are taken positionally as in
        ``forward``. Gradients flow: wrap the call in ``torch.no_grad()`` for inference.
        """
        if self.config.modality == "audio" and audio is None:
            video, audio = None, video
        pooled, parts = self._pooled(video, audio)
        return {**parts, "fused": self.fc_norm(pooled)}

    def forward(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes) for classification, activated outputs for regression.

        Single-modality models accept their input positionally: ``model(video)`` or ``model(audio)``
        (a (B,1,256,128) tensor passed first to an audio model is taken as audio).
        """
        feat = self.embed(video, audio)["fused"]  # one definition of what the head sees
        return self.head_activation(self.head(self.fc_dropout(feat)))

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (int labels or soft targets) for classification, MSE for regression."""
        if self.config.task == "regression":
            return F.mse_loss(outputs.float(), targets.float().view_as(outputs))
        if targets.dtype.is_floating_point:
            return torch.sum(-targets * F.log_softmax(outputs.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(outputs.float(), targets)
