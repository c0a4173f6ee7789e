"""The training loop shared by the three stages (pre-training, post-pre-training, fine-tuning).

One loop, flat: build model -> data stream -> AdamW + schedule -> for each optimizer step, run
``grad_accum`` micro-batches under autocast, clip, step, log, save. What differs per stage is only
the model head and the loss (``_step_loss``). Everything stateful (model, optimizer, scaler, step,
RNG of every rank, loader position of every rank) goes into the checkpoint, so ``--resume``
reproduces the per-step losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt_io
from . import distributed as D
from .config import TrainConfig, resolve_model_name, save_yaml, to_dict
from .data import ClipStream, StreamState, make_loader, resolve_shards
from .errors import DataError, StageError, one_line
from .labels import get_label_map
from .optim import CosineSchedule, build_optimizer, plan_schedule
from .preflight import check_batch_fits, check_init_classes, resolve_labels
from .shardinfo import scan_shards
from .transforms import ClipTransformConfig

__all__ = ["DataError", "StageError", "TrainResult", "build_model", "train"]


# --------------------------------------------------------------------------- model building


def task_head(cfg: TrainConfig) -> dict[str, Any]:
    """create_model keyword arguments for the supervised head of ``cfg``."""
    if cfg.stage == "pretrain":
        return {}
    kw: dict[str, Any] = {"modality": cfg.model.modality}
    if cfg.finetune.task == "dea":
        kw.update(task="regression")
    return kw


def num_classes_for(cfg: TrainConfig) -> int:
    if cfg.finetune.num_classes > 0:
        return cfg.finetune.num_classes
    label_map = get_label_map(cfg.data.label_map)
    if label_map is not None:
        return label_map.num_classes
    raise StageError("set --num-classes (finetune.num_classes): it cannot be inferred without a label map")


def class_names_for(cfg: TrainConfig) -> list[str] | None:
    """Names of the classifier's outputs, stored in checkpoints and predictions.

    A label map (``data.label_map``) names its classes; otherwise they are ``data.classes``, the
    label map the shards were imported with (every sample and ``classes.json`` carry it), which
    the pre-flight check copied into the config.
    """
    if cfg.stage == "pretrain" or cfg.finetune.task == "dea":
        return None
    label_map = get_label_map(cfg.data.label_map)
    if label_map is not None:
        return list(label_map.classes)
    return list(cfg.data.classes) or None


def build_model(cfg: TrainConfig) -> nn.Module:
    from avf_models import create_model

    name = resolve_model_name(cfg.model.name)
    overrides = dict(cfg.model.overrides)
    if cfg.model.drop_path is not None:
        overrides["drop_path_rate"] = cfg.model.drop_path
    if cfg.stage == "pretrain":
        return create_model(name, stage="pretrain", **overrides)
    overrides.update(task_head(cfg))
    return create_model(name, stage="finetune", num_classes=num_classes_for(cfg), **overrides)


def check_input_spec(model: nn.Module, cfg: TrainConfig) -> None:
    """Fail before training when the data pipeline would feed the model the wrong shapes."""
    spec = getattr(D.unwrap(model), "input_spec", None)
    if spec is None:
        return
    want = (spec.frames, spec.image_size, spec.audio_frames, spec.mel_bins)
    got = (cfg.data.num_frames, cfg.data.image_size, cfg.data.audio_frames, cfg.data.mel_bins)
    if want != got:
        raise StageError(f"shape mismatch: model {cfg.model.name} expects frames/image/audio-frames/mel-bins "
                         f"{want}, the data config gives {got}; fix data.* or the model overrides")


def model_from_init(cfg: TrainConfig, log) -> None:
    """With no --model, a supervised stage builds the architecture its --init checkpoint was
    trained with (name and ModelConfig overrides such as depth), so the chain needs no repetition."""
    if cfg.model.name or cfg.stage == "pretrain" or not cfg.finetune.init:
        return
    ckpt = ckpt_io.load(cfg.finetune.init)
    name = ckpt.get("model_name")
    if not name:
        raise StageError(f"--init {ckpt['path']} does not record its model; pass --model")
    saved = (ckpt.get("config") or {}).get("model", {}).get("overrides", {}) or {}
    cfg.model.name = name
    cfg.model.overrides = {**saved, **cfg.model.overrides}
    log(f"model {name} (from --init)")


def init_from(model: nn.Module, cfg: TrainConfig, log) -> None:
    """Load ``finetune.init`` into a supervised model, refusing checkpoints of the wrong stage."""
    from avf_models import load_pretrained_into_finetune

    ckpt = ckpt_io.load(cfg.finetune.init)
    stage = ckpt.get("stage", "unknown")
    allowed = {"postpretrain": ("pretrain", "unknown"), "finetune": ("pretrain", "postpretrain", "unknown")}
    if stage not in allowed.get(cfg.stage, ()):
        raise StageError(f"--init {ckpt['path']} is a {stage!r} checkpoint; {cfg.stage} starts from "
                         f"{' or '.join(s for s in allowed.get(cfg.stage, ()) if s != 'unknown')} checkpoints")
    note = check_init_classes(cfg, ckpt)
    if note:
        log(note)
    try:
        report = load_pretrained_into_finetune(model, ckpt["model"])
    except Exception as exc:  # shape mismatch etc.: say which file and model
        raise StageError(f"cannot load {ckpt['path']} into {cfg.model.name}: {exc}") from exc
    log(f"init from {ckpt['path']} ({stage}): {len(report.loaded)} tensors loaded, "
        f"{len(report.missing)} left at init, {len(report.ignored)} ignored")


# --------------------------------------------------------------------------- data


def transform_config(cfg: TrainConfig, mode: str) -> ClipTransformConfig:
    d = cfg.data
    return ClipTransformConfig(num_frames=d.num_frames, sampling_rate=d.sampling_rate, image_size=d.image_size,
                               audio_frames=d.audio_frames, crop_scales=tuple(d.crop_scales),
                               audio_gain_aug=d.audio_gain_aug, mode=mode, rand_augment=d.rand_augment,
                               rrc_scale=tuple(d.random_resized_crop_scale), flip=d.flip,
                               random_erase=d.random_erase, test_segments=d.test_segments,
                               test_crops=d.test_crops)


def train_stream(cfg: TrainConfig, shards: list[str], info: D.DistInfo, state: StreamState | None) -> ClipStream:
    mode = "pretrain" if cfg.stage == "pretrain" else "finetune"
    repeats = 1 if cfg.stage == "pretrain" else cfg.data.repeated_aug
    classify = cfg.stage != "pretrain" and cfg.finetune.task != "dea"
    return ClipStream(shards, transform_config(cfg, mode), cfg.run.batch_size, train=True, seed=cfg.run.seed,
                      rank=info.rank, world_size=info.world_size, num_workers=cfg.data.num_workers,
                      shuffle_buffer=cfg.data.shuffle_buffer, repeats=repeats,
                      label_map=get_label_map(cfg.data.label_map), labelled=cfg.stage != "pretrain",
                      state=state, classes=tuple(cfg.data.classes) if classify else (),
                      num_classes=cfg.finetune.num_classes if classify else 0)


# --------------------------------------------------------------------------- losses


def mix_targets(batch: dict[str, Any], cfg: TrainConfig, num_classes: int, rng: np.random.Generator,
                train: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup/CutMix (timm semantics, pairs i with B-1-i) on the video, targets mixed to match.

    As in the official fine-tuning code the audio is left unmixed (ARCH_SPEC §8); with
    ``finetune.mix_audio`` it is mixed linearly with the same (area-corrected) lambda. CutMix pastes
    one box into every frame. Classification targets are label-smoothed one-hots; DEA regression
    targets are mixed linearly without smoothing.
    """
    video, audio = batch["video"], batch["audio"]
    f = cfg.finetune
    regression = f.task == "dea"
    if regression:
        if "targets" not in batch:
            raise StageError("task dea needs 'targets' (a list of floats) in the clips' metadata")
        target = batch["targets"]
    else:
        off = f.label_smoothing / num_classes
        labels = batch["label"]
        if labels.min() < 0 or labels.max() >= num_classes:
            raise StageError(f"labels {labels.tolist()} outside [0, {num_classes}); check --num-classes and the label map")
        target = torch.full((len(labels), num_classes), off)
        target.scatter_(1, labels[:, None], 1.0 - f.label_smoothing + off)
    if not train or (f.mixup <= 0 and f.cutmix <= 0) or rng.random() >= f.mixup_prob or len(video) < 2:
        return video, audio, target
    use_cutmix = f.cutmix > 0 and (f.mixup <= 0 or rng.random() < f.mixup_switch_prob)
    lam = float(rng.beta(f.cutmix, f.cutmix) if use_cutmix else rng.beta(f.mixup, f.mixup))
    if use_cutmix:
        h, w = video.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        video = video.clone()
        video[..., y0:y1, x0:x1] = video.flip(0)[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        video = video * lam + video.flip(0) * (1.0 - lam)
    if f.mix_audio:
        audio = audio * lam + audio.flip(0) * (1.0 - lam)
    target = target * lam + target.flip(0) * (1.0 - lam)
    return video, audio, target


def supervised_forward(model: nn.Module, cfg: TrainConfig, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    if cfg.model.modality == "video":
        return model(video=video)
    if cfg.model.modality == "audio":
        return model(audio=audio)
    return model(video, audio)


def supervised_loss(outputs: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    if task == "dea":
        return F.mse_loss(outputs.float(), target.float().view_as(outputs))
    return torch.sum(-target * F.log_softmax(outputs.float(), dim=-1), dim=-1).mean()


# --------------------------------------------------------------------------- logging


class MetricsLog:
    """JSONL (always) and TensorBoard (optional) metrics, written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.fh = open(run_dir / "metrics.jsonl", "a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception as exc:  # tensorboard is optional at run time
                print(f"[avf-train] tensorboard disabled: {exc}", file=sys.stderr)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        safe = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.fh.write(json.dumps(safe) + "\n")  # strict JSON: inf/nan become null
        self.fh.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.fh:
            self.fh.close()
        if self.tb is not None:
            self.tb.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint we resume from (a killed run logged past its last
    save), so metrics.jsonl reads like one uninterrupted run."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    checkpoint: Path | None


def _autocast(info: D.DistInfo, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=info.device.type, dtype=dtype)


def _state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)
    return D.unwrap(model).state_dict(), optimizer.state_dict()


def _load_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_model_state_dict(model, ckpt["model"], options=opts)
        set_optimizer_state_dict(model, optimizer, ckpt["optimizer"], options=opts)
        return
    D.unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) one stage as configured; returns where it stopped."""
    info = D.init(cfg.run.device)
    if not cfg.run.out:
        raise ValueError("set --out (run.out): the run folder for config, checkpoints and metrics")
    run_dir = Path(cfg.run.out)

    def log(msg: str) -> None:
        if info.is_main:
            print(f"[avf-train {cfg.stage}] {msg}", flush=True)

    # ---- resume point (read before anything consumes randomness) ----
    resume_ckpt = None
    if resume:
        resume_ckpt = ckpt_io.load(run_dir, map_location="cpu")
        if resume_ckpt.get("stage") != cfg.stage:
            raise StageError(f"{resume_ckpt['path']} is a {resume_ckpt.get('stage')!r} checkpoint; "
                             f"cannot resume it as {cfg.stage}")
    elif info.is_main and (run_dir / "checkpoint").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out")

    shards = resolve_shards(cfg.data.shards)
    # ---- pre-flight: what the shards hold, read before any worker starts ----
    labelled = cfg.stage != "pretrain"
    data_info = scan_shards(shards, read_meta=labelled)
    check_batch_fits(data_info, cfg.run.batch_size, info.world_size, cfg.data.num_workers)
    if labelled:
        val_info = scan_shards(resolve_shards(cfg.data.val_shards), read_meta=True) if cfg.data.val_shards else None
        space = resolve_labels(cfg, data_info, val_info)
        if space is not None:
            log(f"label map: {len(space.classes)} classes {list(space.classes)} ({space.source})")
    if resume_ckpt is None:
        model_from_init(cfg, log)
    cfg.model.name = resolve_model_name(cfg.model.name)
    torch.manual_seed(cfg.run.seed)  # same init on every rank (FSDP2 does not broadcast it)
    model = build_model(cfg)
    repeats = 1 if cfg.stage == "pretrain" else max(1, cfg.data.repeated_aug)
    if cfg.run.batch_size * repeats < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                for m in model.modules()):
        raise StageError(f"{cfg.model.name} has BatchNorm (IAV-CL's ER layer): use run.batch_size >= 2 per process")
    # per-rank streams from here on: masks, drop path and anything else random differ across ranks
    torch.manual_seed(cfg.run.seed + info.rank)
    np.random.seed((cfg.run.seed + info.rank) % 2**32)
    random.seed(cfg.run.seed + info.rank)
    check_input_spec(model, cfg)
    if cfg.stage != "pretrain" and cfg.finetune.init and resume_ckpt is None:
        init_from(model, cfg, log)
    elif cfg.stage != "pretrain" and not cfg.finetune.init and resume_ckpt is None:
        log("warning: no --init given; training the supervised model from random initialisation")
    model.to(info.device)

    # ---- schedule (official semantics: batch in clips, lr/min_lr/warmup_lr x global batch / 256) ----
    world, accum = info.world_size, max(1, cfg.optim.grad_accum)
    epoch_size = cfg.data.epoch_size or data_info.total
    plan = plan_schedule(cfg, epoch_size, world)
    global_batch, steps_per_epoch, total_steps = plan.global_batch, plan.steps_per_epoch, plan.total_steps
    schedule = plan.schedule
    peak, warmup = schedule.peak, schedule.warmup_steps
    stop_at = min(total_steps, cfg.run.max_steps) if cfg.run.max_steps > 0 else total_steps

    model = D.wrap(model, info, cfg.run.fsdp, find_unused=cfg.run.find_unused_parameters)
    optimizer = build_optimizer(D.unwrap(model), cfg.optim, peak)
    forward_model = torch.compile(model) if cfg.run.compile else model  # same parameters, compiled graph
    use_scaler = cfg.run.precision == "fp16"
    scaler = torch.amp.GradScaler(info.device.type, enabled=use_scaler)

    step, data_state = 0, StreamState(num_workers=max(1, cfg.data.num_workers), world_size=world,
                                      batch_size=cfg.run.batch_size)
    if resume_ckpt is not None:
        _load_state_dicts(model, optimizer, resume_ckpt, cfg.run.fsdp)
        if use_scaler and resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        step = int(resume_ckpt["step"])
        rngs, datas = resume_ckpt["rng"], resume_ckpt["data"]
        if len(rngs) == world:
            ckpt_io.set_rng_state(rngs[info.rank])
        else:
            log(f"warning: checkpoint has RNG states for {len(rngs)} ranks, running on {world}; reseeding")
        saved = StreamState.from_dict(datas[info.rank]) if len(datas) == world else None
        if saved is not None and (saved.num_workers, saved.world_size, saved.batch_size) == (
                data_state.num_workers, world, cfg.run.batch_size):
            data_state = saved
        else:
            log("warning: loader layout changed since the checkpoint (ranks/workers/batch); the data stream "
                "restarts from its first pass, so the run is no longer bit-identical to an uninterrupted one")
        log(f"resumed {resume_ckpt['path']} at step {step}")

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
    if info.is_main and resume_ckpt is not None:
        truncate_metrics(run_dir / "metrics.jsonl", step)
    metrics = MetricsLog(run_dir, info.is_main, cfg.run.tensorboard)
    stream = train_stream(cfg, shards, info, data_state)
    loader = make_loader(stream, cfg.data.num_workers)
    loader.generator = torch.Generator().manual_seed(cfg.run.seed)  # keep the global RNG untouched
    batches = iter(loader)
    num_classes = 0 if cfg.stage == "pretrain" else num_classes_for(cfg)
    views = f" x {repeats} augmented copies = {plan.views_per_step} views" if repeats > 1 else ""
    log(f"{len(shards)} shard(s), {epoch_size} clips/epoch, {steps_per_epoch} steps/epoch, {total_steps} steps "
        f"total (running to {stop_at}), global batch {global_batch} clips{views}, peak lr {peak:.3g} "
        f"(min {schedule.min_lr:.3g}, warmup from {schedule.warmup_lr:.3g} over {warmup} steps), "
        f"device {info.device}, world {world}")

    model.train()
    last_loss, saved_path = float("nan"), None
    t_last, clips_since = time.perf_counter(), 0
    t_start, start_step = t_last, step
    while step < stop_at:
        lr = schedule.apply(optimizer, step)
        sums: dict[str, float] = {}
        for micro in range(accum):
            try:
                batch = next(batches)
            except DataError as exc:  # raised in a loader worker: torch wraps it in its traceback
                raise DataError(one_line(exc)) from None
            worker, pass_index, batch_index = batch["pos"]
            data_state.advance(worker, pass_index, batch_index)
            video = batch["video"].to(info.device, non_blocking=True)
            audio = batch["audio"].to(info.device, non_blocking=True)
            last_micro = micro == accum - 1
            if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter on the last micro-step only
                model.set_requires_gradient_sync(last_micro)
            sync = nullcontext() if (last_micro or not hasattr(model, "no_sync")) else model.no_sync()
            with sync:
                with _autocast(info, cfg.run.precision):
                    if cfg.stage == "pretrain":
                        out = forward_model(video, audio)
                        loss = out["loss"]
                        parts = {k: out[k] for k in ("loss_video", "loss_audio", "loss_contrastive")}
                    else:
                        rng = np.random.default_rng([cfg.run.seed, info.rank, step, micro])
                        video, audio, target = mix_targets(batch, cfg, num_classes, rng)
                        outputs = supervised_forward(forward_model, cfg, video.to(info.device), audio.to(info.device))
                        loss = supervised_loss(outputs, target.to(info.device), cfg.finetune.task)
                        parts = {}
                scaler.scale(loss / accum).backward()
            sums["loss"] = sums.get("loss", 0.0) + loss.item() / accum
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
        if use_scaler:
            scaler.unscale_(optimizer)
        max_norm = cfg.optim.clip_grad if cfg.optim.clip_grad > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        if not math.isfinite(grad_norm) and not use_scaler:
            log(f"warning: non-finite gradient norm at step {step}; skipping the update")
            optimizer.zero_grad(set_to_none=True)
        else:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        clips_since += global_batch
        last_loss = sums["loss"]
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"loss is {last_loss} at step {step}; lower the lr or use bf16/fp32")

        if step % cfg.run.log_every == 0 or step == stop_at:
            vals = D.mean_across(sums, info)
            now = time.perf_counter()
            rate = clips_since / max(now - t_last, 1e-9)
            eta = (now - t_start) / max(step - start_step, 1) * (stop_at - step)
            record = {"step": step, "epoch": step / steps_per_epoch, "lr": lr, **vals, "grad_norm": grad_norm,
                      "clips_per_s": rate, "eta_s": eta}
            if use_scaler:
                record["loss_scale"] = float(scaler.get_scale())
            metrics.write(record)
            log(f"step {step}/{stop_at} ep {step / steps_per_epoch:.2f} loss {vals['loss']:.4f} lr {lr:.3g} "
                f"gnorm {grad_norm:.3g} {rate:.1f} clips/s ETA {_fmt_time(eta)}")
            t_last, clips_since = now, 0

        if step % cfg.run.save_every == 0 or step == stop_at:
            saved_path = save_checkpoint(run_dir, cfg, model, optimizer, scaler, schedule, step, steps_per_epoch,
                                         data_state, info)
    metrics.close()
    del batches
    D.shutdown()
    return TrainResult(run_dir=run_dir, step=step, last_loss=last_loss, checkpoint=saved_path)


def save_checkpoint(run_dir: Path, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, schedule: CosineSchedule, step: int, steps_per_epoch: int,
                    data_state: StreamState, info: D.DistInfo) -> Path | None:
    """Collective (every rank gathers RNG and loader states); rank 0 writes the file."""
    model_sd, optim_sd = _state_dicts(model, optimizer, cfg.run.fsdp)
    rngs = D.gather_objects(ckpt_io.rng_state(), info)
    datas = D.gather_objects(data_state.to_dict(), info)
    path = None
    if info.is_main:
        payload = {"stage": cfg.stage, "model_name": resolve_model_name(cfg.model.name), "model": model_sd,
                   "optimizer": optim_sd, "scheduler": schedule.state_dict(), "scaler": scaler.state_dict(),
                   "step": step, "epoch": step / steps_per_epoch, "rng": rngs, "data": datas,
                   "config": to_dict(cfg)}
        names = class_names_for(cfg)
        if names is not None:
            payload["class_names"] = names
            if cfg.data.label_protocol:
                payload["label_protocol"] = cfg.data.label_protocol
        path = ckpt_io.save(run_dir, step, payload, keep_last=cfg.run.keep_last)
    if info.distributed:
        torch.distributed.barrier()
    return path
