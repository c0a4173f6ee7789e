"""SyncNet v2 (Chung & Zisserman, "Out of time", ACCV-W 2016) in torch, for stage 5.

This is an independent re-implementation of the network that the public
``syncnet_v2.model`` weights belong to (the model published with
joonson/syncnet_python). Only facts about that model are reproduced here:

* Layer structure and parameter names. The state dict keys are
  ``netcnnaud.*`` / ``netfcaud.*`` (audio) and ``netcnnlip.*`` / ``netfclip.*``
  (video), with the ``nn.Sequential`` indices of the official module, so the
  official file loads 1:1 (see :data:`OFFICIAL_STATE_DICT_SHAPES`). The
  official file was written before BatchNorm had a ``num_batches_tracked``
  buffer; those buffers are optional when loading (they do not affect eval).
* Audio input: python_speech_features-style MFCC (13 coefficients, 25 ms
  rectangular window, 10 ms hop = 100 Hz, 26 mel filters, NFFT 512,
  pre-emphasis 0.97, lifter 22, c0 replaced by log frame energy) computed on
  16 kHz int16-scaled samples; one audio sample for the network is a
  ``1 x 13 x 20`` MFCC block = 0.2 s = 5 video frames at 25 fps. Video
  window ``i`` (frames ``i..i+4``) is paired with MFCC columns ``4i..4i+19``.
* Video input: 5 consecutive 224x224 colour frames, **BGR** channel order
  (the original reads frames with ``cv2.imread``) and raw 0..255 float values
  (no mean/std normalisation), tensor layout ``N x 3 x 5 x 224 x 224``.
  The 224x224 crop of the original pipeline is the *whole face* box extended
  downwards, not a lower-half mouth crop: for a face box of half side ``bs``
  centred at ``(cx, cy)`` it takes rows ``cy - bs .. cy + 1.8 bs`` and columns
  ``cx - 1.4 bs .. cx + 1.4 bs`` (crop_scale 0.4), padding with grey value 110
  outside the image. :func:`lip_input_from_face_crop` reproduces that
  geometry from our stage-4 face crop (see ``face_crop_scale``).
* Offset search: embeddings of video window ``i`` are compared (Euclidean
  distance) with audio embeddings ``i + k`` for ``k`` in ``-vshift..vshift``
  (audio embedding sequence zero-padded at both ends, as the original does);
  distances are averaged over all windows per ``k``. The reported offset is
  ``vshift - argmin`` = ``-k_best``: **negative offset = audio lags the video**
  (audio delayed), positive = audio leads. Confidence = median over ``k`` of
  the mean distance minus its minimum; ``min_distance`` is that minimum.
  The original run_syncnet.py uses ``vshift = 15``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "OFFICIAL_STATE_DICT_SHAPES",
    "SyncNetV2",
    "SyncNetWeightsError",
    "load_syncnet_v2",
    "mfcc_psf",
    "lip_input_from_face_crop",
    "offset_search",
    "OffsetSearch",
]

SYNCNET_FPS = 25.0
SYNCNET_SAMPLE_RATE = 16000
SYNCNET_IMAGE_SIZE = 224
FRAMES_PER_WINDOW = 5
MFCC_PER_VIDEO_FRAME = 4  # 100 Hz MFCC / 25 fps video
MFCC_PER_WINDOW = 20
EMBEDDING_DIM = 1024
PAD_GREY = 110  # value the original pipeline pads out-of-image crop pixels with


def _conv_bn(prefix: str, idx: int, cin: int, cout: int, kernel: tuple[int, ...]) -> dict:
    """Shapes of a conv (at ``idx``) followed by its BatchNorm (at ``idx + 1``)."""
    return {
        f"{prefix}.{idx}.weight": (cout, cin, *kernel),
        f"{prefix}.{idx}.bias": (cout,),
        f"{prefix}.{idx + 1}.weight": (cout,),
        f"{prefix}.{idx + 1}.bias": (cout,),
        f"{prefix}.{idx + 1}.running_mean": (cout,),
        f"{prefix}.{idx + 1}.running_var": (cout,),
    }


def _fc(prefix: str, out_dim: int) -> dict:
    return {
        f"{prefix}.0.weight": (512, 512),
        f"{prefix}.0.bias": (512,),
        f"{prefix}.1.weight": (512,),
        f"{prefix}.1.bias": (512,),
        f"{prefix}.1.running_mean": (512,),
        f"{prefix}.1.running_var": (512,),
        f"{prefix}.3.weight": (out_dim, 512),
        f"{prefix}.3.bias": (out_dim,),
    }


def _official_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    # Audio CNN: Sequential indices of the conv layers in the official module.
    for idx, cin, cout, k in [
        (0, 1, 64, (3, 3)),
        (4, 64, 192, (3, 3)),
        (8, 192, 384, (3, 3)),
        (11, 384, 256, (3, 3)),
        (14, 256, 256, (3, 3)),
        (18, 256, 512, (5, 4)),
    ]:
        shapes.update(_conv_bn("netcnnaud", idx, cin, cout, k))
    shapes.update(_fc("netfcaud", EMBEDDING_DIM))
    shapes.update(_fc("netfclip", EMBEDDING_DIM))
    # Lip CNN (Conv3d, kernel T x H x W).
    for idx, cin, cout, k in [
        (0, 3, 96, (5, 7, 7)),
        (4, 96, 256, (1, 5, 5)),
        (8, 256, 256, (1, 3, 3)),
        (11, 256, 256, (1, 3, 3)),
        (14, 256, 256, (1, 3, 3)),
        (18, 256, 512, (1, 6, 6)),
    ]:
        shapes.update(_conv_bn("netcnnlip", idx, cin, cout, k))
    return shapes


#: Every parameter / running-stat tensor of the official ``syncnet_v2.model``
#: state dict with its shape (88 tensors: 13.6 M parameters + BN running stats).
#: BatchNorm ``*.num_batches_tracked`` scalars are not listed: the official
#: file predates them, and they are accepted but not required when loading.
OFFICIAL_STATE_DICT_SHAPES: dict[str, tuple[int, ...]] = _official_shapes()


class SyncNetV2(nn.Module):
    """SyncNet v2: audio branch on 13x20 MFCC, lip branch on 5 x 224 x 224 BGR."""

    def __init__(self, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1),  # 0
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=1, stride=1),
            nn.Conv2d(64, 192, kernel_size=3, stride=1, padding=1),  # 4
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 8
            nn.BatchNorm2d(384),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 11
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 14
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=0),  # 18: 5x4 -> 1x1
            nn.BatchNorm2d(512),
            nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Linear(512, embedding_dim),
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Linear(512, embedding_dim),
        )
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),  # 0
            nn.BatchNorm3d(96),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),  # 4
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # 8
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # 11
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # 14
            nn.BatchNorm3d(256),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0),  # 18: 6x6 -> 1x1
            nn.BatchNorm3d(512),
            nn.ReLU(inplace=True),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 13, 20)`` MFCC blocks -> ``(N, 1024)``."""
        mid = self.netcnnaud(mfcc)
        return self.netfcaud(mid.flatten(1))

    def lip_features(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, 224, 224)`` BGR 0..255 -> ``(B * (T - 4), 1024)``.

        Only the first conv has a temporal extent (5, stride 1, no padding),
        so running the stack over a ``T``-frame chunk yields exactly the
        ``T - 4`` sliding 5-frame window outputs of the original, without
        copying each window.
        """
        mid = self.netcnnlip(video)  # (B, 512, T-4, 1, 1)
        mid = mid.permute(0, 2, 1, 3, 4).reshape(-1, 512)
        return self.netfclip(mid)

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 5, 224, 224)`` windows -> ``(N, 1024)`` (the original API)."""
        mid = self.netcnnlip(video)
        return self.netfclip(mid.flatten(1))

    def forward(self, video: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches in one call (what DDP wraps when ``avf-train syncnet`` trains this
        network): ``(B, 3, T, 224, 224)`` BGR runs -> ``(B * (T - 4), 1024)`` window
        embeddings, ``(N, 1, 13, 20)`` MFCC blocks -> ``(N, 1024)``."""
        return self.lip_features(video), self.forward_aud(mfcc)


class SyncNetWeightsError(ValueError):
    """The SyncNet weights file is missing, not a state dict, or does not match."""


def load_syncnet_v2(path: str | os.PathLike, device: str = "cpu") -> SyncNetV2:
    """Build :class:`SyncNetV2` and load the official ``syncnet_v2.model`` into it.

    The file must be a (possibly pickled-by-``torch.save``) mapping of tensor
    names to tensors with exactly the official keys and shapes
    (:data:`OFFICIAL_STATE_DICT_SHAPES`); ``num_batches_tracked`` buffers are
    optional. Anything else raises :class:`SyncNetWeightsError` naming the file.
    """
    p = Path(path)
    state = _read_state_dict(p)
    _check_layout(p, state)
    model = SyncNetV2()
    own = model.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            if k in own:
                own[k].copy_(v.to(own[k].dtype))
    return model.to(device).eval()


def _read_state_dict(p: Path) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping stored in ``p``, unwrapped from a ``{"state_dict": ...}``
    checkpoint and from the ``__S__.`` / ``module.`` prefixes of training wrappers, so that
    the keys can be compared with the official ones; a file that is none of these raises."""
    if not p.is_file():
        raise SyncNetWeightsError(f"SyncNet weights file not found: {p}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise SyncNetWeightsError(
            f"cannot read SyncNet weights {p}: not a torch.save'd state dict "
            f"loadable with weights_only=True{_file_hint(p)} ({_load_error(exc)})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise SyncNetWeightsError(
            f"SyncNet weights {p} is not a state dict of name -> tensor (got {type(state).__name__})"
        )
    # Tolerate checkpoints saved from a wrapper that stored the net as ``__S__``
    # or through DataParallel.
    for prefix in ("__S__.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _check_layout(p: Path, state: dict[str, torch.Tensor]) -> None:
    """Raise unless ``state`` has exactly the official keys and shapes: a wrong file would
    otherwise load partly and give meaningless sync offsets. Names the likely mix-up."""
    expected = OFFICIAL_STATE_DICT_SHAPES
    optional = {k for k in SyncNetV2().state_dict() if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - optional)
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs expected {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch {_short(wrong)}")
    if not problems:
        return
    hint = ""
    if any(k.startswith(("conv1_1.", "conv3_3_norm", "fc7.", "conv4_3_norm_mbox")) for k in state):
        hint = (
            " (this looks like the S3FD face detector, sfd_face.pth, which download_model.sh fetches "
            "too; SyncNet's file is syncnet_v2.model)"
        )
    raise SyncNetWeightsError(
        f"SyncNet weights {p} do not match the official syncnet_v2 layout{hint}: " + "; ".join(problems)
    )


#: Bytes of the official file's tensors (float32): a much smaller file is a cut-off download.
OFFICIAL_TENSOR_BYTES = 4 * sum(math.prod(s) for s in OFFICIAL_STATE_DICT_SHAPES.values())


def _file_hint(p: Path) -> str:
    """Why a file that torch cannot read is probably not the weights: a web page saved in
    its place (a failed download), a plain pickle (not what torch.save writes, and a pickle
    runs code when loaded: never unpickled here) or a truncated download."""
    try:
        with open(p, "rb") as fh:
            raw = fh.read(64)
        size = p.stat().st_size
    except OSError:
        return ""
    head = raw.lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml")):
        return " (it is an HTML/XML page: the download failed; fetch syncnet_v2.model again)"
    if raw[:1] == b"\x80" and not raw.startswith(_LEGACY_TORCH_MAGIC):
        return " (it is a plain pickle, not a torch.save file; a pickle can run code, so it is not unpickled)"
    if size < 0.9 * OFFICIAL_TENSOR_BYTES:
        return (
            f" (it has {size} bytes, the official file about {OFFICIAL_TENSOR_BYTES / 2**20:.0f} MiB: "
            "a truncated download?)"
        )
    return ""


#: How torch.save's legacy (pre-1.6, non-zip) format starts: pickle protocol 2, then its magic
#: number as a LONG1 (the official syncnet_v2.model of 2017 is in this format).
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _load_error(exc: BaseException) -> str:
    """torch.load's error on one line: its weights-only refusal runs over a dozen lines of
    advice; the line naming the problem (and the one after an ``error:`` heading) is enough."""
    import re

    lines = [" ".join(ln.split()) for ln in str(exc).splitlines() if ln.strip()]
    at = next((i for i, ln in enumerate(lines) if "unpickler error" in ln.lower()), None)
    text = lines[0] if lines else ""
    if at is not None:  # "... use case: WeightsUnpickler error:" then the reason on the next line
        found = re.search(r"\w*unpickler error:?.*", " ".join(lines[at : at + 2]), re.IGNORECASE)
        text = found.group(0) if found else text
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _short(items: list[str], n: int = 6) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "[" + ", ".join(items[:n]) + "]" + more


# --------------------------------------------------------------------------- audio


def _hz2mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel2hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def _mel_filterbank(nfilt: int, nfft: int, sample_rate: int) -> np.ndarray:
    mel_points = np.linspace(_hz2mel(0.0), _hz2mel(sample_rate / 2.0), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(mel_points) / sample_rate)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    k = np.arange(nfft // 2 + 1)
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        rise = (k >= lo) & (k < mid)
        fall = (k >= mid) & (k < hi)
        fb[j, rise] = (k[rise] - lo) / (mid - lo)
        fb[j, fall] = (hi - k[fall]) / (hi - mid)
    return fb


def mfcc_psf(signal: np.ndarray, sample_rate: int = SYNCNET_SAMPLE_RATE, numcep: int = 13) -> np.ndarray:
    """MFCC with python_speech_features' default settings; returns ``(numcep, n_frames)``.

    ``signal`` is on the int16 scale (the original reads a 16-bit wav with
    ``scipy.io.wavfile``), 25 ms frames, 10 ms hop, zero-padded at the end.
    """
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    if x.size == 0:
        x = np.zeros(1)
    x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    frame_len = int(round(0.025 * sample_rate))
    step = int(round(0.010 * sample_rate))
    n_frames = 1 if x.size <= frame_len else 1 + math.ceil((x.size - frame_len) / step)
    padded = np.zeros((n_frames - 1) * step + frame_len)
    padded[: x.size] = x
    idx = np.arange(frame_len)[None, :] + step * np.arange(n_frames)[:, None]
    frames = padded[idx]
    nfft = 512
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = pspec.sum(axis=1)
    eps = np.finfo(float).eps
    energy = np.where(energy == 0, eps, energy)
    feat = pspec @ _mel_filterbank(26, nfft, sample_rate).T
    feat = np.where(feat == 0, eps, feat)
    feat = np.log(feat)
    # DCT-II, orthonormal, first numcep coefficients.
    n = feat.shape[1]
    kk = np.arange(numcep)[:, None]
    basis = np.cos(np.pi * kk * (2 * np.arange(n)[None, :] + 1) / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    cep = feat @ basis.T
    lift = 1.0 + 11.0 * np.sin(np.pi * np.arange(numcep) / 22.0)
    cep = cep * lift
    cep[:, 0] = np.log(energy)
    return cep.T.astype(np.float32)


# --------------------------------------------------------------------------- video


def lip_input_from_face_crop(
    frames: np.ndarray, face_crop_scale: float = 1.8, size: int = SYNCNET_IMAGE_SIZE
) -> np.ndarray:
    """Map our square face crops to SyncNet's 224x224 BGR input geometry.

    ``frames``: ``(T, H, W, 3)`` uint8 RGB, face centred in the crop, crop side
    = ``face_crop_scale`` x face-box side. Returns ``(T, 3, size, size)``
    float32 BGR 0..255 covering rows ``cy - bs .. cy + 1.8 bs`` and columns
    ``cx +- 1.4 bs`` of the original pipeline (``bs`` = half the face box),
    padded with grey 110 where that window leaves our crop.
    """
    import cv2

    t, h, w = frames.shape[:3]
    side = float(min(h, w))
    bs = side / (2.0 * face_crop_scale)
    cy, cx = h / 2.0, w / 2.0
    y0, y1 = cy - bs, cy + 1.8 * bs
    x0, x1 = cx - 1.4 * bs, cx + 1.4 * bs
    # Affine map from output pixel centres to that window (one resample, no
    # explicit padding copy); border = grey 110 like the original's np.pad.
    sx = (x1 - x0) / size
    sy = (y1 - y0) / size
    m = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]], dtype=np.float64)
    out = np.empty((t, 3, size, size), dtype=np.float32)
    for i in range(t):
        img = cv2.warpAffine(
            np.ascontiguousarray(frames[i, :, :, ::-1]),  # RGB -> BGR
            m,
            (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(PAD_GREY, PAD_GREY, PAD_GREY),
        )
        out[i] = img.transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------- offset search


@dataclass
class OffsetSearch:
    offset: int  # SyncNet convention: -k_best, negative = audio lags video
    confidence: float  # median(mean dist) - min(mean dist)
    min_distance: float
    mean_dists: np.ndarray  # (2 * vshift + 1,), index j <-> k = j - vshift


def offset_search(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int) -> OffsetSearch:
    """The original offset search over ``-vshift..vshift`` (see module docstring)."""
    n = min(len(video_emb), len(audio_emb))
    v = video_emb[:n].float()
    a = audio_emb[:n].float()
    win = 2 * vshift + 1
    a_pad = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    # Column j: video window i vs audio embedding i + j - vshift (zero outside the clip).
    dists = torch.stack(
        [torch.nn.functional.pairwise_distance(v, a_pad[j : j + n]) for j in range(win)], dim=1
    )  # (n, win)
    mdist = dists.mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    # torch.median of an odd-length vector is the middle value, as the original.
    conf = torch.median(mdist) - minval
    return OffsetSearch(
        offset=int(vshift - int(minidx)),
        confidence=float(conf),
        min_distance=float(minval),
        mean_dists=mdist.numpy(),
    )


# --------------------------------------------------------------------------- fast inference


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a conv / linear layer into its weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = (bias - bn.running_mean) * scale + bn.bias
    return w.detach().clone(), b.detach().clone()


class SyncNetFast(nn.Module):
    """Inference-only SyncNet v2 with the same numbers as :class:`SyncNetV2`, faster.

    Why it is faster (CPU: ~1.5x on one core; see ``tools/bench/syncnet.py``):

    * the lip branch's 3-D convolutions run as 2-D ones. The first layer's 5-frame
      kernel becomes a 2-D kernel over 15 channels (5 frames x BGR stacked), the
      later layers have a temporal extent of 1 and run on every window as a
      batch; oneDNN's 2-D kernels in channels-last layout are faster than its
      3-D ones, and the pooling layers are 4x faster in channels-last;
    * eval-mode BatchNorm is folded into the preceding convolution / linear
      layer and ReLUs run in place: at 224 px the first layer's 96 x 109 x 109
      output makes every separate elementwise pass cost ~3 ms per window;
    * the lip input arrives as uint8 **RGB** frames; the first layer's kernel
      is flipped to BGR order once, so no per-frame channel swap is needed.

    Each window's embedding still depends only on its own 5 frames / 20 MFCC
    columns, as in the original, so batching many windows (of one or many
    clips) changes nothing but speed. Differences to :class:`SyncNetV2` are
    float32 rounding only (summation order, BN folding): ~1e-6 relative.
    """

    def __init__(self, model: SyncNetV2) -> None:
        super().__init__()
        model = model.eval()
        lip, aud = model.netcnnlip, model.netcnnaud
        # Lip conv 0: (96, 3[BGR], 5, 7, 7) -> RGB order -> (96, 15, 7, 7) with channel t * 3 + c.
        w0, b0 = _fold_bn(lip[0].weight, lip[0].bias, lip[1])
        w0 = w0.flip(1).permute(0, 2, 1, 3, 4).reshape(w0.shape[0], 15, *w0.shape[3:])
        self.lip_convs = nn.ParameterList()
        self.lip_biases = nn.ParameterList()
        self._lip_specs: list[tuple[int, int]] = []  # (stride, padding) per conv
        for w, b in [(w0, b0)] + [
            _fold_bn(lip[i].weight.squeeze(2), lip[i].bias, lip[i + 1]) for i in (4, 8, 11, 14, 18)
        ]:
            self.lip_convs.append(nn.Parameter(w.contiguous(memory_format=torch.channels_last), requires_grad=False))
            self.lip_biases.append(nn.Parameter(b, requires_grad=False))
        self._lip_specs = [(2, 0), (2, 1), (1, 1), (1, 1), (1, 1), (1, 0)]
        self.aud_convs = nn.ParameterList()
        self.aud_biases = nn.ParameterList()
        for i in (0, 4, 8, 11, 14, 18):
            w, b = _fold_bn(aud[i].weight, aud[i].bias, aud[i + 1])
            self.aud_convs.append(nn.Parameter(w, requires_grad=False))
            self.aud_biases.append(nn.Parameter(b, requires_grad=False))
        self._aud_pads = [1, 1, 1, 1, 1, 0]
        fa, fl = model.netfcaud, model.netfclip
        self.fc_aud = [
            _fold_bn(fa[0].weight, fa[0].bias, fa[1]),
            (fa[3].weight.detach().clone(), fa[3].bias.detach().clone()),
        ]
        self.fc_lip = [
            _fold_bn(fl[0].weight, fl[0].bias, fl[1]),
            (fl[3].weight.detach().clone(), fl[3].bias.detach().clone()),
        ]
        for name, pairs in (("fc_aud", self.fc_aud), ("fc_lip", self.fc_lip)):
            for j, (w, b) in enumerate(pairs):
                self.register_buffer(f"{name}_w{j}", w)
                self.register_buffer(f"{name}_b{j}", b)

    def _fc(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.linear(x, getattr(self, f"{name}_w0"), getattr(self, f"{name}_b0")).relu_()
        return torch.nn.functional.linear(x, getattr(self, f"{name}_w1"), getattr(self, f"{name}_b1"))

    def lip(self, windows: torch.Tensor) -> torch.Tensor:
        """``(N, 15, 224, 224)`` float RGB 0..255 windows (channel ``t * 3 + c``,
        ideally channels-last; see :func:`lip_windows`) -> ``(N, 1024)``."""
        F = torch.nn.functional
        x = windows
        for j, (w, b) in enumerate(zip(self.lip_convs, self.lip_biases, strict=True)):
            stride, pad = self._lip_specs[j]
            x = F.conv2d(x, w, b, stride=stride, padding=pad).relu_()
            if j == 0:
                x = F.max_pool2d(x, 3, 2)
            elif j == 1:
                x = F.max_pool2d(x, 3, 2, padding=1)
            elif j == 4:
                x = F.max_pool2d(x, 3, 2)
        return self._fc("fc_lip", x.flatten(1))

    def aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 13, 20)`` MFCC blocks -> ``(N, 1024)``."""
        F = torch.nn.functional
        x = mfcc
        for j, (w, b) in enumerate(zip(self.aud_convs, self.aud_biases, strict=True)):
            x = F.conv2d(x, w, b, padding=self._aud_pads[j]).relu_()
            if j == 1:
                x = F.max_pool2d(x, 3, stride=(1, 2))
            elif j == 4:
                x = F.max_pool2d(x, 3, stride=2)
        return self._fc("fc_aud", x.flatten(1))


def fill_lip_windows(frames_rgb: np.ndarray, start: int, stop: int, out: np.ndarray) -> None:
    """Write windows ``start..stop-1`` of ``(T, 224, 224, 3)`` uint8 RGB frames into
    ``out`` (``(stop - start, 224, 224, 15)`` float32, NHWC): window ``i`` stacks frames
    ``i..i+4`` along the channel axis, channel ``t * 3 + c``.

    The overlapping windows are a strided *view* of the frames; numpy's strided
    cast-copy fills the batch about 5x faster than ``torch.cat`` of the shifted
    frames (0.5 vs 2.7 ms per window on one core).
    """
    frames = np.ascontiguousarray(frames_rgb)
    n = stop - start
    t, h, w, c = frames.shape
    if start < 0 or n < 1 or stop + FRAMES_PER_WINDOW - 1 > t or c != 3:
        raise ValueError(
            f"windows {start}..{stop - 1} need frames up to {stop + FRAMES_PER_WINDOW - 2}, got {frames.shape}"
        )
    fs = frames.strides
    view = np.lib.stride_tricks.as_strided(
        frames[start:],
        shape=(n, h, w, FRAMES_PER_WINDOW, c),
        strides=(fs[0], fs[1], fs[2], fs[0], fs[3]),
        writeable=False,
    )
    out.reshape(n, h, w, FRAMES_PER_WINDOW, c)[...] = view


def lip_windows(frames_rgb: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Windows ``start..stop-1`` as the ``(n, 15, 224, 224)`` channels-last float32
    input of :meth:`SyncNetFast.lip` (see :func:`fill_lip_windows`)."""
    n = stop - start
    h, w = np.shape(frames_rgb)[1:3]
    x = np.empty((max(n, 0), h, w, 3 * FRAMES_PER_WINDOW), np.float32)
    fill_lip_windows(frames_rgb, start, stop, x)
    return torch.from_numpy(x).permute(0, 3, 1, 2)  # NCHW view of NHWC memory = channels-last
