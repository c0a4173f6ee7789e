"""Masks: exact counts, ratios, seed reproducibility, the running-cell pattern, dual-mask overlap."""

from __future__ import annotations

import torch

from avf_models import get_config
from avf_models.masking import (
    PretrainMaskGenerator,
    PretrainMasks,
    random_mask,
    running_cell_mask,
    running_cell_patterns,
    tube_mask,
    visible_indices,
)

GRID = (8, 10, 10)


def test_tube_mask_exact_counts_and_tubes() -> None:
    m = tube_mask(5, GRID, 0.9, torch.Generator().manual_seed(0))
    assert m.shape == (5, 800) and m.dtype == torch.bool
    assert ((~m).sum(1) == 80).all()
    per_slot = m.view(5, 8, 100)
    assert (per_slot == per_slot[:, :1]).all(), "the same spatial mask must repeat over time"
    assert not (m[0] == m[1]).all(), "samples must get different masks"


def test_random_mask_audio_counts() -> None:
    m = random_mask(7, 128, 0.8125, torch.Generator().manual_seed(1))
    assert ((~m).sum(1) == 24).all()
    d = random_mask(7, 128, 0.5, torch.Generator().manual_seed(1))
    assert ((~d).sum(1) == 64).all()


def test_random_mask_is_uniform_over_positions() -> None:
    m = random_mask(4000, 128, 0.8125, torch.Generator().manual_seed(2)).float().mean(0)
    assert torch.allclose(m, torch.full_like(m, 104 / 128), atol=0.04)


def test_seed_reproducibility() -> None:
    gen = PretrainMaskGenerator(get_config("avfmae_pp_base"))
    a = gen(4, generator=torch.Generator().manual_seed(123))
    b = gen(4, generator=torch.Generator().manual_seed(123))
    c = gen(4, generator=torch.Generator().manual_seed(124))
    for x, y in zip(
        (a.video, a.audio, a.video_decoder, a.audio_decoder),
        (b.video, b.audio, b.video_decoder, b.audio_decoder),
        strict=False,
    ):
        assert torch.equal(x, y)
    assert not torch.equal(a.video, c.video) or not torch.equal(a.audio, c.audio)


def test_running_cell_pattern_matches_videomae_v2() -> None:
    maps = running_cell_patterns(GRID, 0.5).view(4, 8, 10, 10)
    tiles = [[[1, 0], [0, 1]], [[0, 0], [1, 1]], [[0, 1], [1, 0]], [[1, 1], [0, 0]]]
    for t in range(8):
        assert maps[0, t, :2, :2].int().tolist() == tiles[t % 4]
        # the 2x2 tile repeats over the grid
        assert torch.equal(maps[0, t], maps[0, t, :2, :2].repeat(5, 5))
    assert (maps.flatten(2).sum(-1) == 50).all(), "every frame is exactly half hidden"
    assert (maps.sum(1) == 4).all(), "each position is hidden in exactly 4 of 8 slots"
    # start offset p shifts the cycle by p slots
    assert torch.equal(maps[1, 0], maps[0, 1])


def test_running_cell_mask_draws_precomputed_maps() -> None:
    m = running_cell_mask(64, GRID, 0.5, torch.Generator().manual_seed(0))
    maps = running_cell_patterns(GRID, 0.5)
    match = (m[:, None, :] == maps[None]).all(-1)
    assert (match.sum(1) == 1).all()
    assert match.any(0).all(), "all four maps should be drawn in 64 samples"


def test_dual_masks_overlap_like_official() -> None:
    cfg = get_config("avfmae_pp_base")
    masks = PretrainMaskGenerator(cfg)(16, generator=torch.Generator().manual_seed(0))
    dec_vis = ~masks.video_decoder
    assert (dec_vis.sum(1) == 400).all()
    # tube + running cell: exactly 40 decoder targets are encoder-visible, so 360 count in the loss
    assert ((dec_vis & ~masks.video).sum(1) == 40).all()
    assert ((dec_vis & masks.video).sum(1) == 360).all()
    assert ((~masks.audio_decoder).sum(1) == 64).all()


def test_hicmae_decoder_mask_is_encoder_complement() -> None:
    cfg = get_config("hicmae_base")
    masks = PretrainMaskGenerator(cfg)(3, generator=torch.Generator().manual_seed(0))
    assert ((~masks.audio).sum(1) == 26).all()
    assert torch.equal(masks.video_decoder, ~masks.video)
    assert cfg.num_decode == 720 and cfg.num_decode_audio == 102


def test_visible_indices_sorted_and_exact() -> None:
    m = tube_mask(3, GRID, 0.9, torch.Generator().manual_seed(5))
    idx = visible_indices(m, 80)
    assert idx.shape == (3, 80)
    assert (idx[:, 1:] > idx[:, :-1]).all()
    assert (~torch.gather(m, 1, idx)).all()


def test_masks_cat_and_dict_round_trip() -> None:
    gen = PretrainMaskGenerator(get_config("avfmae_pp_tiny"))
    parts = [gen(1, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    whole = PretrainMasks.cat(parts)
    assert whole.video.shape == (3, 800) and whole.audio_decoder.shape == (3, 128)
    assert torch.equal(whole.audio[2], parts[2].audio[0])
    again = PretrainMasks(**whole.as_dict())
    assert torch.equal(again.video_decoder, whole.video_decoder)
