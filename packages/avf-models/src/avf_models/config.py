"""Typed model configurations: AVF-MAE++ Base/Large/Huge (paper Table 4, official scripts), the
HiCMAE-B baseline and a CPU-sized ``tiny`` model for tests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class InputSpec:
    """Input shapes a model expects, so trainers and data pipelines can build matching tensors."""

    frames: int
    image_size: int
    audio_frames: int
    mel_bins: int

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """Per-sample video shape (C, T, H, W); the batch adds a leading B."""
        return (3, self.frames, self.image_size, self.image_size)

    @property
    def audio_shape(self) -> tuple[int, int, int]:
        """Per-sample log-mel fbank shape (1, frames, mel bins)."""
        return (1, self.audio_frames, self.mel_bins)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes an AVF-MAE++ (or HiCMAE baseline) model.

    Defaults are the official Base settings; see ``CONFIGS`` for the named variants.  Pre-training
    and fine-tuning share one config so that their parameter names and shapes line up exactly.
    """

    name: str = "avfmae_pp_base"
    # modality encoders (one width for both modalities, asserted by the official fusion)
    embed_dim: int = 512
    num_heads: int = 8
    depth: int = 10
    depth_audio: int = 10
    mlp_ratio: float = 4.0
    encoder_type: Literal["lgi", "vit"] = "lgi"
    # inputs
    num_frames: int = 16
    image_size: int = 160
    patch_size: int = 16
    tubelet_size: int = 2
    audio_frames: int = 256
    mel_bins: int = 128
    audio_patch_size: int = 16
    # LGI regions (t, h, w) on the video token grid and (t, f) on the audio grid
    region_size: tuple[int, int, int] = (2, 5, 10)
    region_size_audio: tuple[int, int] = (4, 4)
    # fusion
    fusion_type: Literal["iavcl", "csblock"] = "iavcl"
    fusion_depth: int = 2
    fusion_num_heads: int = 8
    # decoders (pre-training only)
    decoder_embed_dim: int = 384
    decoder_num_heads: int = 6
    decoder_depth: int = 4
    skip_layers: tuple[int, ...] = (3, 6, 9)
    # masking (pre-training only)
    mask_ratio: float = 0.9
    mask_ratio_audio: float = 0.8125
    decoder_masking: bool = True  # dual masking (AVF-MAE++); False = decode all masked tokens (HiCMAE)
    decoder_mask_ratio: float = 0.5
    decoder_mask_ratio_audio: float = 0.5
    # pre-training losses
    frame_diff_target: bool = True
    contrastive_temperature: float = 0.07
    contrastive_weight: float = 0.0025
    restore_token_order: bool = False
    # regularisation; create_model() sets 0.1 for fine-tuning unless overridden
    drop_path_rate: float = 0.0
    # fine-tuning head
    num_classes: int = 11
    modality: Literal["av", "video", "audio"] = "av"
    task: Literal["classification", "regression"] = "classification"
    head_activation: Literal["identity", "sigmoid", "tanh", "relu"] = "identity"
    fc_drop_rate: float = 0.0

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int, int]:
        """Video token grid (T', H', W')."""
        p = self.patch_size
        return (self.num_frames // self.tubelet_size, self.image_size // p, self.image_size // p)

    @property
    def grid_audio(self) -> tuple[int, int]:
        """Audio token grid (time, frequency)."""
        p = self.audio_patch_size
        return (self.audio_frames // p, self.mel_bins // p)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def num_patches_audio(self) -> int:
        t, f = self.grid_audio
        return t * f

    @property
    def num_regions(self) -> int:
        (t, h, w), (rt, rh, rw) = self.grid, self.region_size
        return (t // rt) * (h // rh) * (w // rw)

    @property
    def num_regions_audio(self) -> int:
        (t, f), (rt, rf) = self.grid_audio, self.region_size_audio
        return (t // rt) * (f // rf)

    @property
    def num_visible(self) -> int:
        """Encoder-visible video tokens: tube masking hides int(ratio*H'W') positions in every slot."""
        t, h, w = self.grid
        return t * (h * w - int(self.mask_ratio * h * w))

    @property
    def num_visible_audio(self) -> int:
        n = self.num_patches_audio
        return n - int(self.mask_ratio_audio * n)

    @property
    def num_decode(self) -> int:
        """Video tokens that receive [MASK] queries in the decoder (Eq. 2)."""
        if not self.decoder_masking:
            return self.num_patches - self.num_visible
        t, h, w = self.grid
        return t * (h * w - int(self.decoder_mask_ratio * h * w))

    @property
    def num_decode_audio(self) -> int:
        n = self.num_patches_audio
        if not self.decoder_masking:
            return n - self.num_visible_audio
        return n - int(self.decoder_mask_ratio_audio * n)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.num_frames, self.image_size, self.audio_frames, self.mel_bins)

    def validate(self) -> ModelConfig:
        """Fail early, with the reason, on settings the architecture cannot run."""
        t, h, w = self.grid
        if self.image_size % self.patch_size or self.num_frames % self.tubelet_size:
            raise ValueError("image_size/num_frames must be multiples of patch_size/tubelet_size")
        if self.audio_frames % self.audio_patch_size or self.mel_bins % self.audio_patch_size:
            raise ValueError("audio_frames/mel_bins must be multiples of audio_patch_size")
        if self.embed_dim % self.num_heads or self.embed_dim % self.fusion_num_heads:
            raise ValueError("embed_dim must be divisible by num_heads and fusion_num_heads")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError("decoder_embed_dim must be divisible by decoder_num_heads")
        if self.decoder_depth != len(self.skip_layers) + 1:
            raise ValueError("decoder_depth must equal len(skip_layers) + 1 (block 0 + one CSBlock per skip)")
        if max(self.skip_layers) >= min(self.depth, self.depth_audio):
            raise ValueError("skip_layers index past the encoder depth")
        if self.encoder_type == "lgi":
            rt, rh, rw = self.region_size
            if t % rt or h % rh or w % rw:
                raise ValueError(f"region_size {self.region_size} does not tile the video grid {self.grid}")
            at, af = self.grid_audio
            if at % self.region_size_audio[0] or af % self.region_size_audio[1]:
                raise ValueError("region_size_audio does not tile the audio grid")
            if self.num_regions != self.num_regions_audio and self.fusion_type == "iavcl":
                raise ValueError("IAV-CL fine-tuning needs the same number of regions per modality")
            # the official code cuts each slot's visible tokens into equal positional groups
            per_slot = self.num_visible // t
            groups = (h // rh) * (w // rw)
            if per_slot % groups:
                raise ValueError(
                    f"{per_slot} visible video tokens per slot cannot be split into {groups} regions; "
                    "choose mask_ratio so that the count divides (0.9 works for 160x160)"
                )
            if self.num_visible_audio % self.num_regions_audio:
                raise ValueError(
                    f"{self.num_visible_audio} visible audio tokens cannot be split into "
                    f"{self.num_regions_audio} regions; use mask_ratio_audio 0.8125 (not 0.8)"
                )
        if self.decoder_masking and (h % 2 or w % 2):
            raise ValueError("running-cell decoder masking needs an even spatial grid")
        return self


_BASE = ModelConfig()

# The widths and depths of the CPU-sized model; applied to another architecture (e.g.
# ``create_model("hicmae_base", **TINY_WIDTHS)``) they give its CPU-sized twin for dry runs.
TINY_WIDTHS: dict[str, Any] = dict(
    embed_dim=64,
    num_heads=4,
    depth=2,
    depth_audio=2,
    fusion_num_heads=4,
    decoder_embed_dim=32,
    decoder_num_heads=4,
    decoder_depth=3,
    skip_layers=(0, 1),
)

CONFIGS: dict[str, ModelConfig] = {
    "avfmae_pp_base": _BASE,
    "avfmae_pp_large": dataclasses.replace(
        _BASE,
        name="avfmae_pp_large",
        embed_dim=640,
        num_heads=10,
        depth=12,
        depth_audio=12,
        fusion_num_heads=10,
        decoder_embed_dim=512,
        decoder_num_heads=8,
        skip_layers=(3, 7, 11),
    ),
    "avfmae_pp_huge": dataclasses.replace(
        _BASE,
        name="avfmae_pp_huge",
        embed_dim=768,
        num_heads=12,
        depth=15,
        depth_audio=15,
        fusion_num_heads=12,
        decoder_embed_dim=640,
        decoder_num_heads=8,
        skip_layers=(4, 9, 14),
    ),
    # HiCMAE-B: vanilla ViT encoders, audio mask 0.8, decoders see every masked token, CSBlock fusion.
    "hicmae_base": dataclasses.replace(
        _BASE,
        name="hicmae_base",
        encoder_type="vit",
        fusion_type="csblock",
        mask_ratio_audio=0.8,
        decoder_masking=False,
    ),
    # CPU-sized model with the full input sizes (16x160x160 video, 256x128 fbank) and the official
    # region layout, so every code path of the big models runs in tests.
    "avfmae_pp_tiny": dataclasses.replace(_BASE, name="avfmae_pp_tiny", **TINY_WIDTHS),
}


def get_config(name: str, **overrides: object) -> ModelConfig:
    """Look up a named config and apply field overrides (unknown fields raise TypeError)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(CONFIGS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise TypeError(f"unknown config fields {bad}; valid fields: {sorted(fields)}")
    return dataclasses.replace(CONFIGS[name], **overrides).validate()
