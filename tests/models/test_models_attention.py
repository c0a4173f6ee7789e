"""Attention backend switch; the GPU test compares SDPA and xformers on the same model."""

from __future__ import annotations

import pytest
import torch

from avf_models import attention, create_model


def test_set_backend_validates_and_resolves_on_cpu() -> None:
    old = attention.get_backend()
    try:
        with pytest.raises(ValueError):
            attention.set_backend("flash")  # type: ignore[arg-type]
        attention.set_backend("auto")
        assert attention.resolve_backend(torch.device("cpu")) == "sdpa"
        attention.set_backend("xformers")
        with pytest.raises(RuntimeError):
            attention.resolve_backend(torch.device("cpu"))
    finally:
        attention.set_backend(old)


def test_attention_matches_reference_math() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 8, generator=g) for _ in range(3))  # (B, N, H, D)
    ref = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / 8**0.5, -1)
    ref = torch.einsum("bhnm,bmhd->bnhd", ref, v)
    assert torch.allclose(attention.attention(q, k, v), ref, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sdpa_and_xformers_agree_on_gpu() -> None:
    if not attention.xformers_available():
        pytest.skip("xformers not installed (optional extra 'gpu')")
    old = attention.get_backend()
    torch.manual_seed(0)
    model = create_model("avfmae_pp_tiny").cuda().eval()
    video = torch.randn(2, 3, 16, 160, 160, device="cuda")
    audio = torch.randn(2, 1, 256, 128, device="cuda")
    masks = model.generate_masks(2, device="cuda", generator=torch.Generator().manual_seed(0))
    outs = {}
    try:
        for backend in ("sdpa", "xformers"):
            attention.set_backend(backend)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                outs[backend] = model(video, audio, masks=masks)
    finally:
        attention.set_backend(old)
    a, b = outs["sdpa"], outs["xformers"]
    assert torch.allclose(a.pred_video.float(), b.pred_video.float(), atol=5e-2, rtol=5e-2)
    assert torch.allclose(a.pred_audio.float(), b.pred_audio.float(), atol=5e-2, rtol=5e-2)
    assert abs(a.loss.item() - b.loss.item()) < 2e-2
