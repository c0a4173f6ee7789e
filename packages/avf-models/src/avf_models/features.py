"""The models' input features: the audio log-mel fbank of the official loaders and the ImageNet video
normalisation constants (avf-train's loader computes both; ``avf_train.fbank`` batches the fbank)."""

from __future__ import annotations

import torch
import torchaudio

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
TARGET_FRAMES = 256
# AudioSet statistics from AudioMAE; the official code divides by 2 x std (not std).
FBANK_MEAN = -4.2677393
FBANK_STD = 4.5689974


def log_mel_fbank(waveform_16k: torch.Tensor, target_frames: int = TARGET_FRAMES) -> torch.Tensor:
    """Kaldi log-mel filterbank of a mono 16 kHz waveform, shaped (target_frames, 128).

    Steps, as in the official loaders: remove the DC offset, Kaldi fbank (HTK-compatible, Hanning
    window, 25 ms / 10 ms, 128 mel bins, no dither, no energy), zero-pad at the end or crop to
    ``target_frames`` *in the log domain*, then normalise with (x - mean) / (2 * std).  Add the channel
    axis (``.unsqueeze(0)``) to get the model's (1, 256, 128) input.  Gain augmentation is a data
    pipeline concern and is not applied here.
    """
    wav = waveform_16k.to(torch.float32)
    if wav.ndim == 2:
        if wav.shape[0] != 1:
            raise ValueError(f"expected a mono waveform, got shape {tuple(wav.shape)}")
    elif wav.ndim == 1:
        wav = wav[None]
    else:
        raise ValueError(f"expected a 1-D or (1, N) waveform, got shape {tuple(wav.shape)}")
    if wav.shape[1] < 400:  # Kaldi needs at least one 25 ms frame
        wav = torch.nn.functional.pad(wav, (0, 400 - wav.shape[1]))
    wav = wav - wav.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        wav,
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=NUM_MEL_BINS,
        dither=0.0,
        frame_shift=10,
    )
    n = fbank.shape[0]
    if n < target_frames:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - n))
    else:
        fbank = fbank[:target_frames]
    return (fbank - FBANK_MEAN) / (FBANK_STD * 2)


def normalize_video(video: torch.Tensor) -> torch.Tensor:
    """Map a [0, 1] video shaped (..., 3, T, H, W) to the model's ImageNet-normalised input."""
    mean = video.new_tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = video.new_tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (video - mean) / std


def denormalize_video(video: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize_video`` (used to build pixel reconstruction targets)."""
    mean = video.new_tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = video.new_tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return video * std + mean
