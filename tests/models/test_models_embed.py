"""``AVFMAEFinetune.embed``: the per-modality and fused vectors, and the fused one is what the head sees."""

from __future__ import annotations

import pytest
import torch

from avf_models import create_model


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, 16, 160, 160, generator=g), torch.randn(batch, 1, 256, 128, generator=g)


@pytest.mark.parametrize(("modality", "task"), [("av", "classification"), ("video", "classification"),
                                                ("audio", "regression")])  # fmt: skip
def test_head_of_fused_is_the_forward(modality: str, task: str) -> None:
    torch.manual_seed(0)
    overrides = {"head_activation": "tanh"} if task == "regression" else {}
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=5, modality=modality, task=task, **overrides)
    model.eval()
    video, audio = _inputs()
    args = (video, audio) if modality == "av" else (video,) if modality == "video" else (audio,)
    with torch.no_grad():
        emb = model.embed(*args)
        logits = model(*args)
        features = model.forward_features(video, audio)
    present = ["video", "audio"] if modality == "av" else [modality]
    assert sorted(emb) == sorted([*present, "fused"])
    dim = model.config.embed_dim
    assert all(emb[m].shape == (2, dim) for m in present)
    assert emb["fused"].shape == (2, 2 * dim if modality == "av" else dim)
    assert torch.equal(model.head_activation(model.head(emb["fused"])), logits)
    assert torch.equal(model.fc_norm(features), emb["fused"])
    if modality != "av":  # a single-modality model's fused vector is its one modality, normalised
        assert torch.equal(model.fc_norm(emb[modality]), emb["fused"])


def test_pre_fusion_vectors_are_the_layer_weighted_region_tokens() -> None:
    """The video vector of the AV model is what a video-only model with the same encoder pools (Eq. 11's half)."""
    torch.manual_seed(0)
    av = create_model("avfmae_pp_tiny", "finetune", num_classes=3).eval()
    video_only = create_model("avfmae_pp_tiny", "finetune", num_classes=3, modality="video").eval()
    backbone = {k: v for k, v in av.state_dict().items() if k.startswith(("encoder.", "layer_weights_video"))}
    missing, _ = video_only.load_state_dict(backbone, strict=False)
    assert all(k.startswith(("fc_norm", "head")) for k in missing)
    video, audio = _inputs()
    with torch.no_grad():
        assert torch.allclose(av.embed(video, audio)["video"], video_only.embed(video)["video"])


def test_embed_keeps_gradients() -> None:
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=3).eval()
    video, audio = _inputs()
    model.embed(video, audio)["fused"].sum().backward()
    assert model.layer_weights_video.grad is not None
