"""The models' input features: the audio log-mel fbank of the official loaders and the ImageNet video
normalisation constants (avf-train's loader computes both).

The fbank is Kaldi's, as the official loaders get it from ``torchaudio.compliance.kaldi.fbank``
(HTK-compatible mel filters, Hann window, 25 ms / 10 ms, 128 bins, no dither, no energy),
computed here step for step: per-frame DC removal, pre-emphasis 0.97 with the first sample
replicated, Hann window, 512-point power spectrum, mel filters from 20 Hz to Nyquist, floor at
float32 epsilon, log. Owning the arithmetic (about thirty lines) means torchaudio, whose compiled
extension needs the very torch build it was made for, is no runtime dependency; the equality
with torchaudio's output is a test. A batch of equal-length waveforms goes through each op
together (one framing, one rFFT, one matmul), and frames past ``target_frames`` are not computed.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
TARGET_FRAMES = 256
# AudioSet statistics from AudioMAE; the official code divides by 2 x std (not std).
FBANK_MEAN = -4.2677393
FBANK_STD = 4.5689974

WINDOW = 400  # 25 ms at 16 kHz
SHIFT = 160  # 10 ms
NFFT = 512  # window rounded up to a power of two
PREEMPHASIS = 0.97
LOW_HZ = 20.0  # Kaldi's default lowest mel filter edge; the highest is Nyquist


def _mel(hz: torch.Tensor | float) -> torch.Tensor | float:
    """Kaldi's (HTK) mel scale."""
    if isinstance(hz, torch.Tensor):
        return 1127.0 * (1.0 + hz / 700.0).log()
    return 1127.0 * math.log(1.0 + hz / 700.0)


def kaldi_mel_banks(num_bins: int = NUM_MEL_BINS) -> torch.Tensor:
    """Triangular mel filters over the 257 power-spectrum bins, shaped (257, num_bins); the
    Nyquist bin gets no weight, as in Kaldi. Equally spaced on the mel scale from 20 Hz to
    8 kHz, each rising from its left neighbour's centre to its own and falling to its right one's."""
    low, high = _mel(LOW_HZ), _mel(SAMPLE_RATE / 2)
    delta = (high - low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left, centre, right = (low + (index + k) * delta for k in (0, 1, 2))
    mel = _mel(SAMPLE_RATE / NFFT * torch.arange(NFFT // 2)).unsqueeze(0)
    up, down = (mel - left) / (centre - left), (right - mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks.to(torch.float32), (0, 1)).t().contiguous()


@lru_cache(maxsize=1)
def _constants() -> tuple[torch.Tensor, torch.Tensor]:
    """(Hann window (400,), mel filters (257, 128)), built once per process."""
    return torch.hann_window(WINDOW, periodic=False, dtype=torch.float32), kaldi_mel_banks()


def log_mel_fbank_batch(
    waves: torch.Tensor, target_frames: int = TARGET_FRAMES, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, N) mono 16 kHz waveforms -> normalised (B, target_frames, 128) fbanks, on their device.

    Row i equals ``log_mel_fbank(waves[i, :lengths[i]], target_frames)`` (``lengths``: valid
    samples per row of a zero-padded batch; all N when not given): the waveform's mean
    removed, Kaldi fbank frames, zero-padded (in the log domain) or cut to ``target_frames``,
    then (x - mean) / (2 std).
    """
    if waves.ndim != 2:
        raise ValueError(f"expected (batch, samples) waveforms, got shape {tuple(waves.shape)}")
    wav = waves.to(torch.float32)
    rows, width = wav.shape
    if lengths is None:
        lengths = torch.full((rows,), width, dtype=torch.long, device=wav.device)
    lengths = lengths.to(device=wav.device, dtype=torch.long)
    if bool((lengths < width).any()):  # whatever the padding holds, it is zeros here
        wav = wav * (torch.arange(width, device=wav.device) < lengths[:, None])
    if width < WINDOW:  # Kaldi needs at least one 25 ms frame: short waves get zeros, as in log_mel_fbank
        wav = F.pad(wav, (0, WINDOW - width))
    padded = lengths.clamp_min(WINDOW)
    wav = wav - (wav.sum(dim=1, keepdim=True) / padded[:, None])
    frames = 1 + (padded - WINDOW) // SHIFT  # per row
    used = min(int(frames.max()), target_frames)  # frames past target_frames are cut anyway: skip them
    x = wav[:, : (used - 1) * SHIFT + WINDOW].unfold(1, WINDOW, SHIFT)  # (B, used, 400)
    x = x - x.mean(dim=2, keepdim=True)
    window, banks = (c.to(wav.device) for c in _constants())
    previous = torch.cat([x[..., :1], x[..., :-1]], dim=2)
    x = (x - PREEMPHASIS * previous) * window
    power = torch.view_as_real(torch.fft.rfft(x, n=NFFT)).pow_(2.0).sum(-1)  # (B, used, 257): |X|^2
    mel = torch.matmul(power, banks).clamp_min_(torch.finfo(torch.float32).eps).log_()
    short = torch.arange(used, device=wav.device)[None, :] >= frames[:, None]
    if bool(short.any()):  # rows with fewer frames: zeros in the log domain, as log_mel_fbank pads
        mel = mel.masked_fill(short[..., None], 0.0)
    if used < target_frames:
        mel = F.pad(mel, (0, 0, 0, target_frames - used))
    return (mel - FBANK_MEAN) / (FBANK_STD * 2)


def log_mel_fbank(waveform_16k: torch.Tensor, target_frames: int = TARGET_FRAMES) -> torch.Tensor:
    """Kaldi log-mel filterbank of a mono 16 kHz waveform, shaped (target_frames, 128).

    Steps, as in the official loaders: remove the DC offset, Kaldi fbank, zero-pad at the end or
    crop to ``target_frames`` *in the log domain*, then normalise with (x - mean) / (2 * std).
    Add the channel axis (``.unsqueeze(0)``) to get the model's (1, 256, 128) input. Gain
    augmentation is a data pipeline concern and is not applied here.
    """
    wav = waveform_16k
    if wav.ndim == 2 and wav.shape[0] != 1:
        raise ValueError(f"expected a mono waveform, got shape {tuple(wav.shape)}")
    if wav.ndim not in (1, 2):
        raise ValueError(f"expected a 1-D or (1, N) waveform, got shape {tuple(wav.shape)}")
    return log_mel_fbank_batch(wav.reshape(1, -1), target_frames)[0]


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
