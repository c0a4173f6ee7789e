"""Test-time inference: every clip expanded into segments x crops views, one JSONL row per view.

The rows are what avf-eval consumes (format documented in the package README): it averages the
views of a clip itself, so nothing is aggregated here beyond an optional quick accuracy. Every row
carries the model's label map (``classes``), and the shards must carry the same one: a test fold
numbered differently from the training folds is refused here, not scored wrongly later.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_io
from . import distributed as D
from .config import TrainConfig, from_dict, resolve_model_name
from .data import ClipStream, make_loader, resolve_shards
from .errors import DataError, one_line
from .labels import get_label_map
from .shardinfo import scan_shards
from .trainer import StageError, build_model, check_input_spec, supervised_forward, transform_config


def inference_config(ckpt: dict[str, Any]) -> TrainConfig:
    """The config a supervised checkpoint (as returned by ``checkpoint.load``) was trained with.

    avf-train checkpoints store it under ``config``. An exported checkpoint without one (a dict
    with ``model_name``, ``model`` and optionally ``num_classes``, ``task`` = ``classification`` /
    ``regression``, ``modality`` and ``model_overrides``) gets the fine-tuning defaults for that
    model; its number of outputs is ``num_classes`` or the rows of ``head.weight``.
    """
    if isinstance(ckpt.get("config"), dict):
        return from_dict(ckpt["config"])
    name = ckpt.get("model_name")
    if not name:
        raise StageError(f"{ckpt['path']}: no 'config' and no 'model_name'; predict needs a dict with "
                         "'model_name' and 'model' (state dict)")
    overrides = dict(ckpt.get("model_overrides") or {})
    modality = overrides.pop("modality", None) or ckpt.get("modality") or "av"
    regression = "regression" in (ckpt.get("task"), overrides.pop("task", None))
    num_classes = int(ckpt.get("num_classes") or 0)
    if num_classes <= 0:
        head = ckpt["model"].get("head.weight")
        if head is None:
            raise StageError(f"{ckpt['path']}: cannot tell the number of outputs (no 'num_classes', no head.weight)")
        num_classes = int(head.shape[0])
    return from_dict({"stage": "finetune", "model": {"name": str(name), "modality": modality, "overrides": overrides},
                      "finetune": {"task": "dea" if regression else "cea", "num_classes": num_classes}})


def load_for_inference(path: str | os.PathLike, device: str | torch.device) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild a supervised model from a checkpoint file or run folder and load its weights.

    Returns the model (in eval mode on ``device``), its config (:func:`inference_config`) and
    the checkpoint dict (with ``path``). Pre-training checkpoints and bare state dicts are
    refused with a :class:`StageError` that says why.
    """
    ckpt = ckpt_io.load(path)
    if ckpt.get("format") == 0 and "model_name" not in ckpt:
        raise StageError(f"{ckpt['path']} is a bare state dict; predict needs a dict with 'model_name' and "
                         "'model' (state dict), such as an avf-train checkpoint")
    stage = ckpt.get("stage", None if isinstance(ckpt.get("config"), dict) else "finetune")
    if stage not in ("postpretrain", "finetune"):
        raise StageError(f"{ckpt['path']} is a {stage!r} checkpoint; predict needs a post-pre-trained "
                         "or fine-tuned one (pre-training checkpoints have no classifier head)")
    cfg = inference_config(ckpt)
    cfg.model.drop_path = 0.0
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # missing/unexpected keys, shape mismatch: say which file and model
        raise StageError(f"cannot load {ckpt['path']} into {resolve_model_name(cfg.model.name)}: {exc}") from exc
    return model.to(device).eval(), cfg, ckpt


@torch.no_grad()
def predict(checkpoint: str, data: str, out: str | os.PathLike, batch_size: int = 8, num_workers: int = 0,
            segments: int | None = None, crops: int | None = None, device: str = "auto",
            precision: str = "fp32", fold: str | int | None = None) -> dict[str, Any]:
    """Write ``out`` (JSONL) and return a summary with clip-level top-1 accuracy when labels exist.

    Under torchrun every rank predicts its share of the clips into ``out.part<rank>`` and rank 0
    concatenates the parts (rank order) into ``out``.
    """
    info = D.init(device)
    model, cfg, ckpt = load_for_inference(checkpoint, info.device)
    if segments is not None:
        cfg.data.test_segments = segments
    if crops is not None:
        cfg.data.test_crops = crops
    check_input_spec(model, cfg)
    tcfg = transform_config(cfg, "test")
    regression = cfg.finetune.task == "dea"
    label_map = get_label_map(cfg.data.label_map)
    names = [str(n) for n in (ckpt.get("class_names") or cfg.data.classes or
                              (label_map.classes if label_map is not None else ()))] if not regression else []
    paths = resolve_shards(data)
    expected = () if regression or label_map is not None else tuple(names)
    if expected:  # the shards' label map must be the model's (checked before any decoding)
        space = scan_shards(paths, read_meta=True).label_space()
        if space is not None and tuple(space.classes) != expected:
            raise DataError(f"{data} number classes as {list(space.classes)} ({space.source}) but "
                            f"{ckpt['path']} was trained on {list(expected)}; import the test data with the "
                            "training data's --protocol / --classes")
    stream = ClipStream(paths, tcfg, batch_size, train=False, seed=cfg.run.seed, rank=info.rank,
                        world_size=info.world_size, num_workers=num_workers, label_map=label_map,
                        classes=expected, num_classes=len(expected))
    epoch = int(math.ceil(float(ckpt.get("epoch", 0)) - 1e-9))  # epochs completed (partial counts as one)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + (f".part{info.rank}" if info.distributed else ".tmp"))
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    batches = iter(make_loader(stream, num_workers))
    with open(part, "w") as fh:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except DataError as exc:  # raised in a loader worker: torch wraps it in its traceback
                part.unlink(missing_ok=True)
                raise DataError(one_line(exc)) from None
            with autocast:
                outputs = supervised_forward(model, cfg, batch["video"].to(info.device),
                                             batch["audio"].to(info.device)).float().cpu()
            probs = None if regression else outputs.softmax(dim=-1)
            for i, key in enumerate(batch["key"]):
                view = int(batch["view"][i])
                row: dict[str, Any] = {"key": key, "label": int(batch["label"][i]), "view": view,
                                       "segment": view // tcfg.test_crops, "crop": view % tcfg.test_crops,
                                       "epoch": epoch}
                if fold is not None:
                    row["fold"] = fold
                if regression:
                    row["outputs"] = outputs[i].tolist()
                    if "targets" in batch:
                        row["targets"] = batch["targets"][i].tolist()
                else:
                    row["logits"] = outputs[i].tolist()
                    row["probs"] = probs[i].tolist()
                    if names:
                        row["classes"] = names
                        if ckpt.get("label_protocol"):
                            row["protocol"] = ckpt["label_protocol"]
                fh.write(json.dumps(row) + "\n")
    if info.distributed:
        torch.distributed.barrier()
        if info.is_main:
            tmp = out.with_name(out.name + ".tmp")
            with open(tmp, "w") as fh:
                for r in range(info.world_size):
                    piece = out.with_name(out.name + f".part{r}")
                    fh.write(piece.read_text())
                    piece.unlink()
            tmp.replace(out)
        D.shutdown()
    else:
        part.replace(out)
    return summarize(out, tcfg.num_views, ckpt["path"]) if info.is_main else {}


def summarize(path: Path, views_per_clip: int, checkpoint: str) -> dict[str, Any]:
    """Row/clip counts and clip-level top-1 (views' probabilities averaged) of a predictions file."""
    clips: dict[str, tuple[int, torch.Tensor | None]] = {}
    rows = 0
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows += 1
        probs = torch.tensor(row["probs"]) if "probs" in row else None
        prev = clips.get(row["key"])
        clips[row["key"]] = (row["label"], probs if prev is None or prev[1] is None else prev[1] + probs)
    summary: dict[str, Any] = {"rows": rows, "clips": len(clips), "views_per_clip": views_per_clip,
                               "checkpoint": checkpoint, "out": str(path)}
    labelled = [(label, p) for label, p in clips.values() if label >= 0 and p is not None]
    if labelled:
        summary["top1"] = sum(int(p.argmax()) == label for label, p in labelled) / len(labelled)
    return summary
