"""Forward passes of the tiny config on CPU: shapes, finite losses that decrease, fine-tuning heads,
plus the pieces the losses are built from (targets, region grouping, HCMCL)."""

from __future__ import annotations

import math

import pytest
import torch

from avf_models import InputSpec, PretrainOutput, create_model, get_config
from avf_models.config import TINY_WIDTHS
from avf_models.encoder import LGIEncoder
from avf_models.losses import audio_target, hcmcl_loss, masked_mse, video_target


def _inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 16, 160, 160, generator=g), torch.randn(batch, 1, 256, 128, generator=g)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small ops run faster single-threaded on a busy 2-core machine; restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("avfmae_pp_tiny")


def test_input_spec(tiny) -> None:
    spec = tiny.input_spec
    assert isinstance(spec, InputSpec)
    assert (spec.frames, spec.image_size, spec.audio_frames, spec.mel_bins) == (16, 160, 256, 128)
    assert spec.video_shape == (3, 16, 160, 160) and spec.audio_shape == (1, 256, 128)


def test_pretrain_forward_shapes_and_loss_parts(tiny) -> None:
    video, audio = _inputs()
    out = tiny(video, audio, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, PretrainOutput)
    assert out.pred_video.shape == (2, 400, 1536)
    assert out.pred_audio.shape == (2, 64, 256)
    for k in ("loss", "loss_video", "loss_audio", "loss_contrastive"):
        assert out[k].ndim == 0 and math.isfinite(out[k].item())
    expected = out.loss_video + out.loss_audio + 0.0025 * out.loss_contrastive
    assert torch.allclose(out.loss, expected)
    # 2 x HCMCL over 2 layers at batch 2 starts near 2 * ln 2
    assert 0.5 < out.loss_contrastive.item() < 4.0


def test_explicit_masks_are_used_and_reproducible(tiny) -> None:
    video, audio = _inputs()
    tiny.eval()
    masks = tiny.generate_masks(2, generator=torch.Generator().manual_seed(3))
    a = tiny(video, audio, masks=masks).loss
    b = tiny(video, audio, masks=masks).loss
    other = tiny.generate_masks(2, generator=torch.Generator().manual_seed(4))
    c = tiny(video, audio, masks=other).loss
    tiny.train()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pretrain_loss_decreases_with_adamw() -> None:
    torch.manual_seed(0)
    model = create_model("avfmae_pp_tiny")
    video, audio = _inputs(batch=2, seed=1)
    masks = model.generate_masks(2, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        out = model(video, audio, masks=masks)
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05, losses


def test_pretrain_gradients_reach_everything_but_last_stage_iv() -> None:
    """Only the last LGI block's stage IV gets a zero gradient: it updates region tokens, which the
    pre-training encoder drops after its last block (same as the official code). The gradient is
    zero, not missing, so DDP needs no find_unused_parameters (a 2-process torchrun runs without)."""
    torch.manual_seed(0)
    model = create_model("avfmae_pp_tiny")
    model(*_inputs()).loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # every parameter is in the graph
    no_grad = {n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0}
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("encoder.blocks.1.fourth_attn", "encoder_audio.blocks.1.fourth_attn"))
    }
    assert len(expected) == 20
    assert no_grad == expected


def test_hicmae_tiny_variant_runs() -> None:
    model = create_model("hicmae_base", **TINY_WIDTHS)
    out = model(*_inputs())
    assert out.pred_video.shape == (2, 720, 1536) and out.pred_audio.shape == (2, 102, 256)
    assert math.isfinite(out.loss.item())


@pytest.mark.parametrize("modality", ["av", "video", "audio"])
def test_finetune_shapes(modality: str) -> None:
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=7, modality=modality).eval()
    video, audio = _inputs(batch=3)
    with torch.no_grad():
        if modality == "av":
            logits = model(video, audio)
        elif modality == "video":
            logits = model(video)
        else:
            logits = model(audio)
    assert logits.shape == (3, 7)
    loss = model.compute_loss(logits, torch.tensor([0, 3, 6]))
    assert math.isfinite(loss.item())


def test_finetune_region_features_shape() -> None:
    model = create_model("avfmae_pp_tiny", "finetune").eval()
    video, audio = _inputs()
    with torch.no_grad():
        assert model.encoder.forward_regions(video).shape == (2, 8, 2, 64)
        assert model.encoder_audio.forward_regions(audio).shape == (2, 8, 2, 64)
        assert model.forward_features(video, audio).shape == (2, 128)


def test_regression_head_with_activation() -> None:
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=2, task="regression", head_activation="tanh")
    video, audio = _inputs()
    out = model(video, audio)
    assert out.shape == (2, 2) and (out.abs() <= 1).all()
    loss = model.compute_loss(out, torch.zeros(2, 2))
    loss.backward()
    assert model.head.weight.grad is not None


def test_soft_target_cross_entropy_matches_hard() -> None:
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=4)
    logits = torch.randn(3, 4)
    hard = torch.tensor([1, 0, 3])
    soft = torch.nn.functional.one_hot(hard, 4).float()
    assert torch.allclose(model.compute_loss(logits, hard), model.compute_loss(logits, soft), atol=1e-6)


def test_finetune_train_step_runs() -> None:
    model = create_model("avfmae_pp_tiny", "finetune", num_classes=5)
    video, audio = _inputs()
    loss = model.compute_loss(model(video, audio), torch.tensor([1, 4]))
    loss.backward()
    assert model.layer_weights_video.grad is not None and model.encoder_fusion.blocks[0].lv1.weight.grad is not None


def test_pretrain_grouping_follows_official_positional_split() -> None:
    """Visible video tokens are split per slot into halves and paired over time, as the official code does."""
    enc = LGIEncoder(get_config("avfmae_pp_tiny"), "video")
    x = torch.arange(80, dtype=torch.float32).view(1, 80, 1)
    grouped = enc._group_visible(x)
    assert grouped.shape == (1, 8, 10, 1)
    flat = enc._ungroup_visible(grouped).flatten().long().tolist()
    assert flat[:20] == [*range(0, 5), *range(10, 15), *range(5, 10), *range(15, 20)]
    enc.restore_token_order = True
    assert enc._ungroup_visible(grouped).flatten().long().tolist() == list(range(80))


def test_finetune_regions_are_spatial_blocks() -> None:
    cfg = get_config("avfmae_pp_tiny")
    enc_v, enc_a = LGIEncoder(cfg, "video"), LGIEncoder(cfg, "audio")
    idx = torch.arange(800, dtype=torch.float32).view(1, 800, 1)
    regions = enc_v._group_all(idx).long()[0, :, :, 0]  # (8, 100)
    t, h, w = regions // 100, (regions % 100) // 10, regions % 10
    assert regions.shape == (8, 100)
    assert (t[1] // 2 == 0).all() and (h[1] >= 5).all() and (t[2] // 2 == 1).all() and (h[2] < 5).all()
    assert set(w[0].tolist()) == set(range(10))
    a = enc_a._group_all(torch.arange(128, dtype=torch.float32).view(1, 128, 1)).long()[0, :, :, 0]
    assert a[0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]
    assert a[1].tolist()[:4] == [4, 5, 6, 7]


def test_video_target_normalised_with_frame_difference() -> None:
    video = torch.randn(1, 3, 16, 160, 160)
    plain = video_target(video, frame_diff=False).view(1, 800, 2, 256, 3)
    diff = video_target(video).view(1, 800, 2, 256, 3)
    assert plain.shape == (1, 800, 2, 256, 3)
    flat = plain.reshape(1, 800, 512, 3)
    assert torch.allclose(flat.mean(2), torch.zeros(1, 800, 3), atol=1e-4)
    assert torch.allclose(flat.std(2), torch.ones(1, 800, 3), atol=1e-3)
    assert torch.equal(diff[:, :, 0], plain[:, :, 0])
    assert torch.allclose(diff[:, :, 1], plain[:, :, 1] - plain[:, :, 0])


def test_video_target_patch_layout() -> None:
    """Token n = t*100 + h*10 + w; pixels ordered (p0, p1, p2, c) with channels last."""
    video = torch.zeros(1, 3, 16, 160, 160)
    video[0, 1, 2 * 3 + 1, 16 * 4 + 5, 16 * 7 + 9] = 100.0  # slot 3, row 4, col 7; p0=1, p1=5, p2=9, c=1
    tgt = video_target(video, frame_diff=False).view(1, 800, 2, 16, 16, 3)
    token = 3 * 100 + 4 * 10 + 7
    assert tgt[0, token].abs().argmax().item() == ((1 * 16 + 5) * 16 + 9) * 3 + 1


def test_audio_target_shape_and_norm() -> None:
    tgt = audio_target(torch.randn(2, 1, 256, 128))
    assert tgt.shape == (2, 128, 256)
    assert torch.allclose(tgt.mean(-1), torch.zeros(2, 128), atol=1e-4)


def test_masked_mse_counts_only_weighted_tokens() -> None:
    pred = torch.zeros(1, 4, 2)
    tgt = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    w = torch.tensor([[True, False, True, False]])
    assert masked_mse(pred, tgt, w).item() == pytest.approx((1 + 9) / 2)


def test_hcmcl_prefers_matched_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(8, 5, 16, generator=g)]
    matched = hcmcl_loss(v, [x.clone() for x in v])
    shuffled = hcmcl_loss(v, [x[torch.randperm(8, generator=g)] for x in v])
    assert matched < shuffled
    same = [torch.ones(4, 3, 16)]
    assert hcmcl_loss(same, same).item() == pytest.approx(math.log(4), rel=1e-5)


def test_bad_input_shape_is_explained(tiny) -> None:
    with pytest.raises(ValueError, match="video must be"):
        tiny(torch.randn(2, 3, 8, 160, 160), torch.randn(2, 1, 256, 128))


def test_config_rejects_indivisible_audio_ratio() -> None:
    with pytest.raises(ValueError, match="0.8125"):
        get_config("avfmae_pp_base", mask_ratio_audio=0.8)


def test_masks_with_wrong_counts_are_rejected(tiny) -> None:
    video, audio = _inputs()
    masks = tiny.generate_masks(2, generator=torch.Generator().manual_seed(0))
    masks.audio[0, torch.nonzero(masks.audio[0])[0]] = False  # one extra visible audio token
    with pytest.raises(RuntimeError, match="audio"):
        tiny(video, audio, masks=masks)
