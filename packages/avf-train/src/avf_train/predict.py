"""Test-time inference: every clip expanded into segments x crops views, one JSONL row per view.

The rows are what avf-eval consumes (format documented in the package README): it averages the
views of a clip itself, so nothing is aggregated here beyond an optional quick accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_io
from .config import TrainConfig, from_dict
from .data import ClipStream, make_loader, resolve_shards
from .labels import get_label_map
from .trainer import StageError, build_model, check_input_spec, supervised_forward, transform_config


def load_for_inference(path: str | os.PathLike, device: torch.device) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild a supervised model from its checkpoint's stored config and load its weights."""
    ckpt = ckpt_io.load(path)
    if ckpt.get("stage") not in ("postpretrain", "finetune"):
        raise StageError(f"{ckpt['path']} is a {ckpt.get('stage')!r} checkpoint; predict needs a post-pre-trained "
                         "or fine-tuned one (pre-training checkpoints have no classifier head)")
    cfg = from_dict(ckpt["config"])
    cfg.model.drop_path = 0.0
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg, ckpt


@torch.no_grad()
def predict(checkpoint: str, data: str, out: str | os.PathLike, batch_size: int = 8, num_workers: int = 0,
            segments: int | None = None, crops: int | None = None, device: str = "auto",
            precision: str = "fp32") -> dict[str, Any]:
    """Write ``out`` (JSONL) and return a summary with clip-level top-1 accuracy when labels exist."""
    dev = torch.device("cuda" if (device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if device == "auto" else device))
    model, cfg, ckpt = load_for_inference(checkpoint, dev)
    if segments is not None:
        cfg.data.test_segments = segments
    if crops is not None:
        cfg.data.test_crops = crops
    check_input_spec(model, cfg)
    tcfg = transform_config(cfg, "test")
    stream = ClipStream(resolve_shards(data), tcfg, batch_size, train=False, seed=cfg.run.seed,
                        num_workers=num_workers, label_map=get_label_map(cfg.data.label_map))
    regression = cfg.finetune.task == "dea"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clip_scores: dict[str, tuple[int, torch.Tensor]] = {}
    rows = 0
    tmp = out.with_suffix(out.suffix + ".tmp")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(dev.type, enabled=False)
    with open(tmp, "w") as fh:
        for batch in make_loader(stream, num_workers):
            with autocast:
                outputs = supervised_forward(model, cfg, batch["video"].to(dev), batch["audio"].to(dev)).float().cpu()
            probs = None if regression else outputs.softmax(dim=-1)
            for i, key in enumerate(batch["key"]):
                view = int(batch["view"][i])
                row: dict[str, Any] = {"key": key, "label": int(batch["label"][i]), "view": view,
                                       "segment": view // tcfg.test_crops, "crop": view % tcfg.test_crops}
                if regression:
                    row["outputs"] = outputs[i].tolist()
                    if "targets" in batch:
                        row["targets"] = batch["targets"][i].tolist()
                else:
                    row["logits"] = outputs[i].tolist()
                    row["probs"] = probs[i].tolist()
                    prev = clip_scores.get(key)
                    clip_scores[key] = (row["label"], probs[i] if prev is None else prev[1] + probs[i])
                fh.write(json.dumps(row) + "\n")
                rows += 1
    os.replace(tmp, out)
    summary: dict[str, Any] = {"rows": rows, "clips": len(clip_scores) or rows // max(1, tcfg.num_views),
                               "views_per_clip": tcfg.num_views, "checkpoint": ckpt["path"], "out": str(out)}
    labelled = [(label, scores) for label, scores in clip_scores.values() if label >= 0]
    if labelled:
        summary["top1"] = sum(int(scores.argmax()) == label for label, scores in labelled) / len(labelled)
    return summary
