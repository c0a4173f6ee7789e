"""The sync expert leaves its run as avf-data wants it: ``RUN/syncnet_expert.model`` + ``.json``.

The weights file is the network's state dict with exactly the official ``syncnet_v2.model`` keys
and shapes (no optimizer, no ``num_batches_tracked``), checked by loading it back through
avf-data's own loader. The sidecar (:mod:`avf_data.stages.sync_calibration`) carries the rule
avf-data applies with these weights, measured here rather than borrowed: the reference's
``confidence >= 3`` and ``|offset| <= 3`` describe the authors' network, whose distances have a
scale of their own.

Calibration: up to ``syncnet.calibration_clips`` clips (``--val-data`` when given, else the
training shards, which the sidecar then calls optimistic) are embedded once through avf-data's
scorer, with the inputs its sync pass would build. Each clip is scored with its own audio and
with the next clip's audio in its place, by the scorer's own offset search. The offset range is
the 95th percentile of ``|offset|`` over the clips in sync (at least 1, at most the reference's
3: a weak expert's scatter must not widen it); the confidence threshold is the one that best
separates the clips in sync from the mismatched pairs (highest mean of the two acceptance
rates; of equally good thresholds the middle one, a margin on both sides). With fewer than
two clips nothing can be measured and the reference's rule is written, saying so.

An expert whose rule separates the clips in sync from the mismatched pairs, or from the same
clips with their audio five frames late, at less than ``WEAK_BELOW`` (the mean of the two
acceptance rates: 0.5 is chance), or that could not be measured, is written as ``weak``: the run
warns, and avf-data warns again wherever the weights are used, since a rule measured on an
expert near chance rejects good clips as readily as bad ones. The shifted test matters: an
expert that has only learnt which voice goes with which face passes the mismatched test and
still cannot see a delay (on ../shared/realdev, 300 CPU steps: 0.83 against mismatched pairs,
0.58 against a 5-frame delay).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt_io
from .config import TrainConfig
from .data import resolve_shards

REFERENCE_RULE = {"min_confidence": 3.0, "max_offset_frames": 3}
WEAK_BELOW = 0.8  # separation under which the sidecar calls its expert weak (0.5: chance)
EMBED_GROUP = 8  # clips decoded and embedded at a time (their 224 px crops are ~150 kB per frame)


def save_official(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write ``state`` in the official layout (float32, official keys only) atomically, and load
    it back through avf-data's loader: what cannot be scored is never left behind."""
    from avf_data.stages.syncnet import OFFICIAL_STATE_DICT_SHAPES, load_syncnet_v2

    official = {k: state[k].detach().float().cpu().contiguous() for k in OFFICIAL_STATE_DICT_SHAPES}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(official, tmp)
    load_syncnet_v2(tmp)
    os.replace(tmp, path)
    return path


def calibration_inputs(cfg: TrainConfig) -> tuple[Iterator[Any], str]:
    """The calibration clips as the sync pass prepares them, and what they are."""
    from avf_data.shards import iter_raw_samples
    from avf_data.sync_pass import prepare_sample

    held_out = bool(cfg.data.val_shards)
    spec = cfg.data.val_shards or cfg.data.shards
    where = f"--val-data {spec!r}" if held_out else f"the training shards {spec!r} (seen in training: optimistic)"
    s = cfg.syncnet

    def clips() -> Iterator[Any]:
        for i, sample in enumerate(iter_raw_samples(resolve_shards(spec))):
            if i >= s.calibration_clips:
                return
            yield prepare_sample(sample, s.face_crop_scale, use_source=s.input == "source")[0]

    return clips(), where


def embed_all(scorer: Any, inputs: Iterator[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(video, audio) embeddings of every clip, a few clips' crops in memory at a time."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    group: list[Any] = []
    for item in inputs:
        group.append(item)
        if len(group) == EMBED_GROUP:
            out += scorer.embed_many(group)
            group = []
    if group:
        out += scorer.embed_many(group)
    return [(v, a) for v, a in out if min(len(v), len(a)) > 0]


def score_pairs(scorer: Any, embs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[Any]]:
    """Each clip with its own audio, with the next clip's audio, and with its own audio five
    frames late (the scorer's offset search on stored embeddings)."""
    out: dict[str, list[Any]] = {"in_sync": [], "mismatched": [], "shifted5": []}
    for i, (v, a) in enumerate(embs):
        out["in_sync"].append(scorer.result(v, a))
        if len(embs) > 1:
            out["mismatched"].append(scorer.result(v, embs[(i + 1) % len(embs)][1]))
        if min(len(v), len(a)) > 10:
            out["shifted5"].append(scorer.result(v[5:], a[:-5]))
    return out


def choose_rule(scores: dict[str, list[Any]]) -> dict[str, Any]:
    """The offset range and confidence threshold that best separate in-sync clips from
    mismatched pairs (module docstring), with how well they do on the calibration clips."""
    sync, other = scores["in_sync"], scores["mismatched"]
    offsets = [abs(r.offset_frames) for r in sync if r.valid]
    max_off = int(np.clip(np.ceil(np.quantile(offsets, 0.95)), 1, 3)) if offsets else 3

    def kept(rs: list[Any], t: float) -> float:
        ok = [r.valid and abs(r.offset_frames) <= max_off and r.confidence >= t for r in rs]
        return float(np.mean(ok)) if ok else 0.0

    values = sorted({float(r.confidence) for r in sync + other if r.valid})
    cuts = [values[0] - 1.0] + [(x + y) / 2 for x, y in zip(values, values[1:], strict=False)] if values else [0.0]
    score = [kept(sync, t) + 1.0 - kept(other, t) for t in cuts]
    tied = [t for t, v in zip(cuts, score, strict=True) if v == max(score)]
    best = tied[len(tied) // 2]  # the middle of the best range: a margin on both sides
    shifted = scores.get("shifted5") or []
    separations = [(kept(sync, best) + 1.0 - kept(rs, best)) / 2 for rs in (other, shifted) if rs]
    return {
        "min_confidence": round(best, 4),
        "max_offset_frames": max_off,
        "in_sync_kept": round(kept(sync, best), 4),
        "mismatched_rejected": round(1.0 - kept(other, best), 4),
        "shifted5_rejected": round(1.0 - kept(shifted, best), 4) if shifted else None,
        "separation": round(min(separations), 4),
        "confidence_median_in_sync": round(float(np.median([r.confidence for r in sync])), 4),
        "confidence_median_mismatched": round(float(np.median([r.confidence for r in other])), 4),
    }


def export_expert(run_dir: Path, cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """Weights and calibrated sidecar of the run's latest checkpoint; returns the sidecar's content."""
    from avf_data.stages.sync import SyncConfig, build_sync_scorer
    from avf_data.stages.sync_calibration import write_calibration

    ckpt = ckpt_io.load(run_dir, map_location="cpu")
    weights = save_official(ckpt["model"], run_dir / cfg.syncnet.export)
    device = cfg.run.device if cfg.run.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    scorer = build_sync_scorer(SyncConfig(device=device, batch_size=64, calibration="config"), weights)
    inputs, where = calibration_inputs(cfg)
    scores = score_pairs(scorer, embed_all(scorer, inputs))
    n = len(scores["in_sync"])
    if len(scores["mismatched"]) < 2:
        rule = dict(REFERENCE_RULE, calibrated=False)
        measured = f"nothing: {n} usable clip(s) of {where}, fewer than 2 (the reference's 3 / ±3 written)"
    else:
        rule = dict(choose_rule(scores), calibrated=True)
        measured = f"{n} clips of {where}: in sync vs the next clip's audio"
    rule["weak"] = not rule["calibrated"] or rule["separation"] < WEAK_BELOW
    payload = {
        "architecture": "syncnet_v2",
        "input": cfg.syncnet.input,
        "rule": {k: rule[k] for k in ("min_confidence", "max_offset_frames")} | {"search_frames": 15},
        "calibration": {"measured_on": measured, "clips": n, **rule},
        "trained": {"run": str(run_dir), "step": int(ckpt["step"]), "shards": cfg.data.shards, "seed": cfg.run.seed},
    }
    sidecar = write_calibration(weights, payload)
    log(
        f"sync expert {weights} (+ {sidecar.name}): reject |offset| > {rule['max_offset_frames']} or confidence < "
        f"{rule['min_confidence']:g}, measured on {measured}"
    )
    if rule["weak"]:
        how = (
            f"separation {rule['separation']:.2f} from mismatched or 5-frame-late audio, 0.5 is chance"
            if rule["calibrated"]
            else "nothing measured"
        )
        log(
            f"warning: this expert is weak ({how}; {WEAK_BELOW} wanted): avf-data will warn wherever it is used; "
            "train longer or on more clips before enforcing sync with it"
        )
    return {"weights": str(weights), "sidecar": str(sidecar), **payload}
