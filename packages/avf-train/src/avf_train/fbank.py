"""The model's audio input for many waveforms at once, equal to ``avf_models.features.log_mel_fbank``.

``log_mel_fbank`` calls ``torchaudio.compliance.kaldi.fbank`` per clip, which rebuilds the
128 mel filters and the window on every call and runs some twenty small ops on one clip:
about 1.5 ms of a loader's ~10 ms budget per clip. Here the filters and window are built once
per process, frames past ``target_frames`` are not computed, and a batch of equal-length
waveforms goes through each op together (one framing, one rFFT, one matmul). The arithmetic is
Kaldi's, step for step (per-frame DC removal,
pre-emphasis 0.97 with the first sample replicated, Hann window, 512-point power spectrum,
HTK mel filters from 20 Hz to Nyquist, floor at float32 epsilon, log), so the output matches
``log_mel_fbank`` to float rounding (checked by ``tests/train/test_loader_speed.py``).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from avf_models.features import FBANK_MEAN, FBANK_STD, NUM_MEL_BINS, SAMPLE_RATE, TARGET_FRAMES

WINDOW = 400  # 25 ms at 16 kHz
SHIFT = 160  # 10 ms
NFFT = 512  # window rounded up to a power of two
PREEMPHASIS = 0.97


@lru_cache(maxsize=1)
def _constants() -> tuple[torch.Tensor, torch.Tensor]:
    """(Hann window (400,), mel filters (257, 128)) as torchaudio's kaldi.fbank builds them."""
    from torchaudio.compliance.kaldi import get_mel_banks

    window = torch.hann_window(WINDOW, periodic=False, dtype=torch.float32)
    banks, _ = get_mel_banks(NUM_MEL_BINS, NFFT, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0)
    banks = F.pad(banks.to(torch.float32), (0, 1))  # the Nyquist bin gets no weight, as in Kaldi
    return window, banks.t().contiguous()


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
