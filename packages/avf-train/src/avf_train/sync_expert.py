"""``avf-train syncnet``: a sync expert trained on one's own shards, for avf-data's sync stage.

The network is avf-data's own :class:`~avf_data.stages.syncnet.SyncNetV2` (the class the
official ``syncnet_v2.model`` loads into), trained from random weights on the corpus's clips:
the exported state dict has the official keys and shapes, so either file works wherever the
other does. Its inputs are the scoring path's (:mod:`avf_train.sync_windows`).

Objective: multi-way matching over Euclidean distances. For every 5-frame video window the
candidates are its own audio (shift 0), the audio of the same clip shifted by ``min_shift`` to
``max_shift`` frames either way, and the aligned audio of the other clips in the batch; the loss
is the cross-entropy of ``softmax(-distance / temperature)`` with the unshifted audio as the
answer. Why this and not the alternatives in the literature:

* SyncNet's own contrastive loss (Chung & Zisserman, ACCV-W 2016: squared distance for
  pairs in sync, hinge on the margin for pairs out of sync) looks at one pair at a time; the
  multi-way version of the same authors (Chung, Chung & Kang, "Perfect Match", ICASSP 2019)
  learns better embeddings for this very task, and it asks what the offset search asks
  (which shift is nearest), where a pairwise loss only asks whether a pair is near.
* Wav2Lip's expert and LatentSync's StableSyncNet score pairs by cosine similarity with a
  binary cross-entropy. avf-data decides by *Euclidean* distances of the raw embeddings (the
  offset search of ``SyncNetInstance``: ``confidence = median - min`` of the mean distances
  over ±15 shifts); a cosine-trained network leaves the embedding norms free, and those would
  then move the distances that decide. Training on the distance the scorer reads keeps the
  exported weights usable by the unchanged scoring path.
* One video window meets ``2 max_shift + 1`` shifts and every other clip of the batch from one
  set of embeddings: the video branch (~1.5 GMAC per window) dominates, so many negatives per
  window is most of what a CPU-sized budget can buy.

Shifts of one frame are left out (neither positive nor negative): neighbouring windows share
four of five frames, and codec delays of a frame or two are common in real files.

Out-of-sync clips in a corpus that is not yet sync-filtered are wrong answers. Two defences,
measured in ``tools/bench/sync_expert.py``: ``syncnet.trim`` leaves the highest-loss share of
each batch's clips out of the gradient once ``trim_after`` steps have passed (the small-loss
selection of Han et al., "Co-teaching", NeurIPS 2018), and a second round trains a fresh expert
on the clips the first one keeps (README, "Bootstrapping sync filtering").
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError, StageError
from .shardinfo import ShardInfo
from .strategy import Log, Pretraining
from .sync_windows import CURATE_HINT, SOURCE_HINT, RunSpec, RunStream, source_problems


class SyncExpert(Pretraining):
    """The strategy of the ``syncnet`` stage: SyncNet v2 from random weights, runs of windows."""

    mode = "syncnet"
    repeats = 1
    labelled = False

    def spec(self) -> RunSpec:
        s = self.cfg.syncnet
        return RunSpec(s.windows, s.max_shift, s.input, s.face_crop_scale, s.flip)

    def check_data(self, train: ShardInfo, log: Log) -> None:
        """What the inputs need, before any worker starts: the curation stack, two clips per
        batch (the other clips are negatives) and, for ``input: source``, every clip's source."""
        try:
            import cv2  # noqa: F401
            import scipy.signal  # noqa: F401
        except ImportError as exc:
            raise StageError(f"{CURATE_HINT} (no module {exc.name!r})") from None
        if self.cfg.run.batch_size < 2:
            raise StageError("avf-train syncnet needs --batch-size >= 2: the other clips of a batch are negatives")
        if self.cfg.syncnet.input != "source":
            return
        total, bad, first = source_problems(train.paths)
        if bad:
            raise DataError(f"{bad} of {total} clips have no usable source crop ({'; '.join(first)}); {SOURCE_HINT}")
        log(f"sync expert input: reference crops from the sources of {total} clips")

    def build_model(self) -> nn.Module:
        from avf_data.stages.syncnet import SyncNetV2

        return SyncNetV2()

    def stream(self, shards: list[str], state: Any) -> RunStream:
        from .transforms import transform_config

        cfg = self.cfg
        return RunStream(
            shards,
            self.spec(),
            cfg.run.batch_size,
            transform_config(cfg, "pretrain"),
            seed=cfg.run.seed,
            rank=self.info.rank,
            world_size=self.info.world_size,
            num_workers=cfg.data.num_workers,
            shuffle_buffer=cfg.data.shuffle_buffer,
            state=state,
        )

    def loss(
        self, model: nn.Module, forward: nn.Module, batch: dict[str, Any], step: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Multi-way matching loss of one batch of runs (module docstring), with its top-1 rate."""
        device, s = self.info.device, self.cfg.syncnet
        video = batch["video"].to(device, non_blocking=True)
        valid = batch["valid"].to(device)
        mfcc = batch["mfcc"].to(device)[valid].unsqueeze(1)  # only audio windows inside their clip
        bgr = video.permute(0, 4, 1, 2, 3).flip(1).float()  # the network's input: BGR, 0..255
        v, a = forward(bgr, mfcc)
        b, w = video.shape[0], s.windows
        audio = v.new_zeros(b, valid.shape[1], v.shape[-1], dtype=torch.float32)
        audio[valid] = a.float()
        logits, mask = run_logits(v.float().view(b, w, -1), audio, valid, s.max_shift, s.min_shift)
        logits = (logits / s.temperature).masked_fill(~mask, -math.inf)
        per_window = F.cross_entropy(logits, torch.full((b * w,), s.max_shift, device=device), reduction="none")
        per_clip = per_window.view(b, w).mean(1)
        keep = trimmed(per_clip, s.trim if step >= s.trim_after else 0.0)
        top1 = (logits.argmax(1) == s.max_shift).float().mean()
        return per_clip[keep].mean(), {"top1": top1.detach(), "kept": keep.float().mean()}


def run_logits(
    video: torch.Tensor, audio: torch.Tensor, valid: torch.Tensor, max_shift: int, min_shift: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative distances of every window to its candidates, and which candidates count.

    ``video`` ``(B, W, D)``: the windows of each run; ``audio`` ``(B, W + 2K, D)``: audio windows
    ``first - K .. first + W - 1 + K`` (``valid`` says which exist). Row ``b * W + w``: first the
    ``2K + 1`` in-clip shifts ``k = -K .. K`` (column ``K`` is the answer), then the aligned audio
    of every window of the batch (another clip's: a negative; the run's own: masked out).
    """
    b, w, _ = video.shape
    k = max_shift
    idx = torch.arange(w, device=video.device)[:, None] + torch.arange(2 * k + 1, device=video.device)[None, :]
    shifted = audio[:, idx]  # (B, W, 2K+1, D): window w against audio window w + K + shift
    d_in = (video[:, :, None] - shifted).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    shifts = torch.arange(-k, k + 1, device=video.device).abs()
    m_in = valid[:, idx] & ((shifts >= min_shift) | (shifts == 0))[None, None]
    aligned = audio[:, k : k + w].reshape(b * w, -1)
    d_x = torch.cdist(video.reshape(b * w, -1), aligned)  # (B W, B W)
    clip = torch.arange(b, device=video.device).repeat_interleave(w)
    m_x = clip[:, None] != clip[None, :]
    logits = torch.cat([-d_in.reshape(b * w, -1), -d_x], 1)
    return logits, torch.cat([m_in.reshape(b * w, -1), m_x], 1)


def trimmed(per_clip: torch.Tensor, share: float) -> torch.Tensor:
    """Which clips of a batch train: all but the ``share`` with the highest loss (at least one
    stays). Ranked per process, so every DDP rank keeps the same number."""
    n = per_clip.numel()
    drop = min(int(share * n), n - 1)
    keep = torch.ones(n, dtype=torch.bool, device=per_clip.device)
    if drop > 0:
        keep[per_clip.detach().topk(drop).indices] = False
    return keep
