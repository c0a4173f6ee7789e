"""The shared audio feature function and video normalisation constants."""

from __future__ import annotations

import math

import pytest
import torch

from avf_models.features import (
    FBANK_MEAN,
    FBANK_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize_video,
    kaldi_mel_banks,
    log_mel_fbank,
    normalize_video,
)


def test_mel_filters_are_kaldis() -> None:
    """Our filters equal torchaudio's kaldi.get_mel_banks (the official loaders' fbank), bit for bit."""
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    banks, _ = kaldi.get_mel_banks(128, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    ours = kaldi_mel_banks()
    assert ours.shape == (257, 128) and torch.equal(ours[:256].t(), banks.to(torch.float32))
    assert not ours[256].any()  # the Nyquist bin carries no weight


def test_fbank_shape_crop_and_normalisation() -> None:
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(int(2.6 * 16000), generator=g) * 0.1
    fb = log_mel_fbank(wav)
    assert fb.shape == (256, 128)  # 258 Kaldi frames cropped to 256
    raw = torch.from_numpy(fb.numpy() * 2 * FBANK_STD + FBANK_MEAN)
    ref = pytest.importorskip("torchaudio.compliance.kaldi").fbank(
        (wav - wav.mean())[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )[:256]
    assert torch.allclose(raw, ref, atol=1e-4)
    for n in (100, 399, 401, 16000, 64000):  # short waves are padded to one frame, long ones cropped
        wav = torch.randn(n, generator=g) * 0.1
        padded = torch.nn.functional.pad(wav, (0, max(0, 400 - n)))
        ref = pytest.importorskip("torchaudio.compliance.kaldi").fbank(
            (padded - padded.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
            window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
        )[:256]  # fmt: skip
        ref = torch.nn.functional.pad(ref, (0, 0, 0, 256 - ref.shape[0]))
        assert (log_mel_fbank(wav) - (ref - FBANK_MEAN) / (2 * FBANK_STD)).abs().max() < 1e-5, n


def test_fbank_pads_with_log_zero_before_normalising() -> None:
    fb = log_mel_fbank(torch.randn(1, 16000))  # 1 s -> 98 frames
    pad_value = (0.0 - FBANK_MEAN) / (2 * FBANK_STD)
    assert fb.shape == (256, 128)
    assert torch.allclose(fb[98:], torch.full((158, 128), pad_value))
    assert not torch.allclose(fb[97], torch.full((128,), pad_value))


def test_fbank_rejects_stereo() -> None:
    with pytest.raises(ValueError):
        log_mel_fbank(torch.randn(2, 16000))


def test_video_normalisation_round_trip() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    x = torch.rand(2, 3, 4, 8, 8)
    assert torch.allclose(denormalize_video(normalize_video(x)), x, atol=1e-6)
    assert math.isclose(normalize_video(torch.full((3, 1, 1, 1), 0.485))[0].item(), 0.0, abs_tol=1e-6)
