"""The training loop shared by the three stages (pre-training, post-pre-training, fine-tuning).

One loop, flat: build model -> data stream -> AdamW + schedule -> for each optimizer step, run
``grad_accum`` micro-batches under autocast, clip, step, log, save. What differs per stage is the
model (``modeling.build_model``) and its loss: the pre-training model returns its own loss, the
supervised one is called on Mixup/CutMix-mixed views (``mixup.mix_targets``) and scored by its
``compute_loss``. Everything stateful (model, optimizer, scaler, step, RNG of every rank, loader
position of every rank) goes into the checkpoint, so ``--resume`` reproduces the per-step losses
of an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt_io
from . import distributed as D
from .config import TrainConfig, resolve_model_name, save_yaml, to_dict, transform_config
from .data import ClipStream, StreamState, make_loader, model_inputs, resolve_shards
from .errors import DataError, StageError, one_line
from .labels import class_names, run_labels
from .metrics import MetricsLog, format_duration, truncate_metrics
from .mixup import mix_targets
from .modeling import build_model, check_input_spec, init_from, model_from_init, num_classes_for
from .optim import CosineSchedule, build_optimizer, plan_schedule
from .preflight import check_batch_fits, resolve_labels
from .shardinfo import scan_shards

# transform_config is also what tools/bench/loader.py imports from here
__all__ = ["TrainResult", "train", "train_stream", "transform_config"]


def train_stream(cfg: TrainConfig, shards: list[str], info: D.DistInfo, state: StreamState | None) -> ClipStream:
    """This rank's share of the training clips, resumed at ``state``."""
    mode = "pretrain" if cfg.stage == "pretrain" else "finetune"
    repeats = 1 if cfg.stage == "pretrain" else cfg.data.repeated_aug
    classify = cfg.stage != "pretrain" and cfg.finetune.task != "dea"
    return ClipStream(
        shards,
        transform_config(cfg, mode),
        cfg.run.batch_size,
        train=True,
        seed=cfg.run.seed,
        rank=info.rank,
        world_size=info.world_size,
        num_workers=cfg.data.num_workers,
        shuffle_buffer=cfg.data.shuffle_buffer,
        repeats=repeats,
        labels=run_labels(cfg) if classify else None,
        labelled=cfg.stage != "pretrain",
        state=state,
        num_classes=cfg.finetune.num_classes if classify else 0,
        device_features=cfg.stage == "pretrain",
    )


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
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)
    return D.unwrap(model).state_dict(), optimizer.state_dict()


def _load_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

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
        raise StageError("set --out (run.out): the run folder for config, checkpoints and metrics")
    run_dir = Path(cfg.run.out)

    def log(msg: str) -> None:
        if info.is_main:
            print(f"[avf-train {cfg.stage}] {msg}", flush=True)

    # ---- resume point (read before anything consumes randomness) ----
    resume_ckpt = None
    if resume:
        resume_ckpt = ckpt_io.load(run_dir, map_location="cpu")
        if resume_ckpt.get("stage") != cfg.stage:
            raise StageError(
                f"{resume_ckpt['path']} is a {resume_ckpt.get('stage')!r} checkpoint; cannot resume it as {cfg.stage}"
            )
    elif info.is_main and (run_dir / "checkpoint").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out")

    shards = resolve_shards(cfg.data.shards)
    # ---- pre-flight: what the shards hold, read before any worker starts ----
    labelled = cfg.stage != "pretrain"
    data_info = scan_shards(shards, read_meta=labelled)
    check_batch_fits(data_info, cfg.run.batch_size, info.world_size, cfg.data.num_workers)
    if labelled:
        val_info = scan_shards(resolve_shards(cfg.data.val_shards), read_meta=True) if cfg.data.val_shards else None
        labels = resolve_labels(cfg, data_info, val_info)
        if labels is not None:
            space = labels.space
            log(f"label map: {space.num_classes} classes {list(space.classes)} ({space.title})")
    if resume_ckpt is None:
        model_from_init(cfg, log)
    cfg.model.name = resolve_model_name(cfg.model.name)
    torch.manual_seed(cfg.run.seed)  # same init on every rank (FSDP2 does not broadcast it)
    model = build_model(cfg)
    repeats = 1 if cfg.stage == "pretrain" else max(1, cfg.data.repeated_aug)
    if cfg.run.batch_size * repeats < 2 and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
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

    step, data_state = (
        0,
        StreamState(num_workers=max(1, cfg.data.num_workers), world_size=world, batch_size=cfg.run.batch_size),
    )
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
            data_state.num_workers,
            world,
            cfg.run.batch_size,
        ):
            data_state = saved
        else:
            log(
                "warning: loader layout changed since the checkpoint (ranks/workers/batch); the data stream "
                "restarts from its first pass, so the run is no longer bit-identical to an uninterrupted one"
            )
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
    log(
        f"{len(shards)} shard(s), {epoch_size} clips/epoch, {steps_per_epoch} steps/epoch, {total_steps} steps "
        f"total (running to {stop_at}), global batch {global_batch} clips{views}, peak lr {peak:.3g} "
        f"(min {schedule.min_lr:.3g}, warmup from {schedule.warmup_lr:.3g} over {warmup} steps), "
        f"device {info.device}, world {world}"
    )

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
            data_state.advance(worker, pass_index, batch_index, batch.get("cursor"))
            video, audio = model_inputs(batch, info.device)  # pre-training: finished on the device
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
                        outputs = forward_model(video.to(info.device), audio.to(info.device))
                        loss = D.unwrap(model).compute_loss(outputs, target.to(info.device))
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
            record = {
                "step": step,
                "epoch": step / steps_per_epoch,
                "lr": lr,
                **vals,
                "grad_norm": grad_norm,
                "clips_per_s": rate,
                "eta_s": eta,
            }
            if use_scaler:
                record["loss_scale"] = float(scaler.get_scale())
            metrics.write(record)
            log(
                f"step {step}/{stop_at} ep {step / steps_per_epoch:.2f} loss {vals['loss']:.4f} lr {lr:.3g} "
                f"gnorm {grad_norm:.3g} {rate:.1f} clips/s ETA {format_duration(eta)}"
            )
            t_last, clips_since = now, 0

        if step % cfg.run.save_every == 0 or step == stop_at:
            saved_path = save_checkpoint(
                run_dir, cfg, model, optimizer, scaler, schedule, step, steps_per_epoch, data_state, info
            )
    metrics.close()
    del batches
    D.shutdown()
    return TrainResult(run_dir=run_dir, step=step, last_loss=last_loss, checkpoint=saved_path)


def save_checkpoint(
    run_dir: Path,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: CosineSchedule,
    step: int,
    steps_per_epoch: int,
    data_state: StreamState,
    info: D.DistInfo,
) -> Path | None:
    """Collective (every rank gathers RNG and loader states); rank 0 writes the file."""
    model_sd, optim_sd = _state_dicts(model, optimizer, cfg.run.fsdp)
    rngs = D.gather_objects(ckpt_io.rng_state(), info)
    datas = D.gather_objects(data_state.to_dict(), info)
    path = None
    if info.is_main:
        payload = {
            "stage": cfg.stage,
            "model_name": resolve_model_name(cfg.model.name),
            "model": model_sd,
            "optimizer": optim_sd,
            "scheduler": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "epoch": step / steps_per_epoch,
            "rng": rngs,
            "data": datas,
            "config": to_dict(cfg),
        }
        labels = run_labels(cfg) if class_names(cfg) is not None else None
        if labels is not None:
            payload["class_names"] = list(labels.space.classes)
            if labels.space.protocol:
                payload["label_protocol"] = labels.space.protocol
        path = ckpt_io.save(run_dir, step, payload, keep_last=cfg.run.keep_last)
    if info.distributed:
        torch.distributed.barrier()
    return path
