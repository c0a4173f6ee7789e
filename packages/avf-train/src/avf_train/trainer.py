"""The training loop shared by the three stages (pre-training, post-pre-training, fine-tuning).

One loop, flat: for each optimizer step, ``grad_accum`` micro-batches under autocast, clip,
step, log, save. What differs per stage (what a batch is, the data checks, how the model starts,
the loss) is decided once, by the stage's strategy (``strategy.py``). Everything stateful (model,
optimizer, scaler, step, RNG of every rank, loader position of every rank) goes into the
checkpoint, so ``--resume`` reproduces the per-step losses of an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt_io
from . import distributed as D
from .config import TrainConfig, resolve_model_name, save_yaml, to_dict
from .data import ClipStream, StreamState, make_loader, resolve_shards
from .errors import DataError, StageError, one_line
from .labels import class_names, run_labels
from .metrics import MetricsLog, truncate_metrics
from .modeling import check_input_spec
from .optim import SchedulePlan, build_optimizer, plan_schedule
from .preflight import check_batch_fits
from .progress import Progress
from .run_folder import check_new_run, check_writable
from .shardinfo import ShardInfo, scan_shards
from .strategy import Pretraining, Supervised
from .sync_expert import SyncExpert

__all__ = ["TrainResult", "train", "train_stream"]


def strategy_for(cfg: TrainConfig, info: D.DistInfo) -> Pretraining:
    """The stage's strategy (``cfg.stage``: pretrain, postpretrain, finetune or syncnet)."""
    if cfg.stage == "syncnet":
        return SyncExpert(cfg, info)
    return Pretraining(cfg, info) if cfg.stage == "pretrain" else Supervised(cfg, info)


def train_stream(cfg: TrainConfig, shards: list[str], info: D.DistInfo, state: StreamState | None) -> ClipStream:
    """This rank's share of the training clips, resumed at ``state`` (the stage's stream)."""
    return strategy_for(cfg, info).stream(shards, state)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    checkpoint: Path | None
    summary: dict[str, Any]


@dataclass
class _Run:
    """What the loop works with, set up once."""

    cfg: TrainConfig
    info: D.DistInfo
    strategy: Pretraining
    plan: SchedulePlan
    model: nn.Module
    forward: nn.Module  # the model, or its compiled graph (same parameters)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data_state: StreamState
    step: int
    run_dir: Path

    @property
    def stop_at(self) -> int:
        total, cap = self.plan.total_steps, self.cfg.run.max_steps
        return min(total, cap) if cap > 0 else total


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) one stage as configured; returns where it stopped."""
    info = D.init(cfg.run.device)
    if not cfg.run.out:
        raise StageError("set --out (run.out): the run folder for config, checkpoints and metrics")
    run_dir = Path(cfg.run.out)
    resume_ckpt = _resume_point(run_dir, cfg.stage, resume, info)  # read before anything consumes randomness
    strategy = strategy_for(cfg, info)
    progress = Progress(cfg.stage, info.is_main, 0, 0, cfg.run.log_every)
    shards = resolve_shards(cfg.data.shards)
    data_info = scan_shards(shards, read_meta=strategy.labelled)  # pre-flight, before any worker starts
    check_batch_fits(data_info, cfg.run.batch_size, info.world_size, cfg.data.num_workers)
    strategy.check_data(data_info, progress.log)
    run = _set_up(cfg, info, strategy, data_info, resume_ckpt, run_dir, progress.log)
    progress = Progress(cfg.stage, info.is_main, run.step, run.stop_at, cfg.run.log_every)
    _announce(run, shards, data_info, progress.log)
    return _loop(run, shards, progress)


def _resume_point(run_dir: Path, stage: str, resume: bool, info: D.DistInfo) -> dict[str, Any] | None:
    """The checkpoint a resumed run continues from (None for a new run), after checking that
    ``--out`` can hold the run (run_folder.py): the first look at the folder, so a wrong one
    is refused before any shard is read, any worker started or any file written."""
    if not resume:
        if info.is_main:
            check_new_run(run_dir)
        return None
    ckpt = ckpt_io.load(run_dir, map_location="cpu")
    if info.is_main:
        check_writable(run_dir)
    if ckpt.get("stage") != stage:
        raise StageError(f"{ckpt['path']} is a {ckpt.get('stage')!r} checkpoint; cannot resume it as {stage}")
    return ckpt


def _set_up(
    cfg: TrainConfig, info: D.DistInfo, strategy: Pretraining, data_info: ShardInfo,
    resume_ckpt: dict[str, Any] | None, run_dir: Path, log: Any,
) -> _Run:  # fmt: skip
    """Model (initialised as the stage says), optimizer, schedule and, on resume, their state."""
    resumed = resume_ckpt is not None
    strategy.start_model(None, resumed, log)  # --init's architecture, before the model is built
    cfg.model.name = resolve_model_name(cfg.model.name)
    torch.manual_seed(cfg.run.seed)  # same init on every rank (FSDP2 does not broadcast it)
    model = strategy.build_model()
    if cfg.run.batch_size * strategy.repeats < 2 and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise StageError(f"{cfg.model.name} has BatchNorm (IAV-CL's ER layer): use run.batch_size >= 2 per process")
    # per-rank streams from here on: masks, drop path and anything else random differ across ranks
    torch.manual_seed(cfg.run.seed + info.rank)
    np.random.seed((cfg.run.seed + info.rank) % 2**32)
    random.seed(cfg.run.seed + info.rank)
    check_input_spec(model, cfg)
    strategy.start_model(model, resumed, log)
    model.to(info.device)
    plan = plan_schedule(cfg, cfg.data.epoch_size or data_info.total, info.world_size, strategy.repeats)
    model = D.wrap(model, info, cfg.run.fsdp, find_unused=cfg.run.find_unused_parameters)
    optimizer = build_optimizer(D.unwrap(model), cfg.optim, plan.schedule.peak)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.run.precision == "fp16")
    data_state = StreamState(
        num_workers=max(1, cfg.data.num_workers), world_size=info.world_size, batch_size=cfg.run.batch_size
    )
    # static shapes: the masks' torch.rand must not see symbolic sizes (dynamic tracing breaks there)
    forward = torch.compile(model, dynamic=False) if cfg.run.compile else model
    run = _Run(cfg, info, strategy, plan, model, forward, optimizer, scaler, data_state, 0, run_dir)
    if resume_ckpt is not None:
        _restore(run, resume_ckpt, log)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
        if resumed:
            truncate_metrics(run_dir / "metrics.jsonl", run.step)
    return run


def _restore(run: _Run, ckpt: dict[str, Any], log: Any) -> None:
    """Model, optimizer, scaler, step, this rank's RNG and loader position from ``ckpt``."""
    ckpt_io.load_training_state(run.model, run.optimizer, ckpt, run.cfg.run.fsdp)
    if run.scaler.is_enabled() and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.step = int(ckpt["step"])
    rngs, datas, world = ckpt["rng"], ckpt["data"], run.info.world_size
    if len(rngs) == world:
        ckpt_io.set_rng_state(rngs[run.info.rank])
    else:
        log(f"warning: checkpoint has RNG states for {len(rngs)} ranks, running on {world}; reseeding")
    saved = StreamState.from_dict(datas[run.info.rank]) if len(datas) == world else None
    layout = (run.data_state.num_workers, world, run.cfg.run.batch_size)
    if saved is not None and (saved.num_workers, saved.world_size, saved.batch_size) == layout:
        run.data_state = saved
    else:
        log(
            "warning: loader layout changed since the checkpoint (ranks/workers/batch); the data stream "
            "restarts from its first pass, so the run is no longer bit-identical to an uninterrupted one"
        )
    log(f"resumed {ckpt['path']} at step {run.step}")


def _announce(run: _Run, shards: list[str], data_info: ShardInfo, log: Any) -> None:
    """The run's plan in one line, and a warning when the warmup outlasts the run."""
    plan, schedule, cfg = run.plan, run.plan.schedule, run.cfg
    copies = run.strategy.repeats
    views = f" x {copies} augmented copies = {plan.views_per_step} views" if copies > 1 else ""
    log(
        f"{len(shards)} shard(s), {cfg.data.epoch_size or data_info.total} clips/epoch, {plan.steps_per_epoch} "
        f"steps/epoch, {plan.total_steps} steps total (running to {run.stop_at}), global batch {plan.global_batch} "
        f"clips{views}, peak lr {schedule.peak:.3g} (min {schedule.min_lr:.3g}, warmup from "
        f"{schedule.warmup_lr:.3g} over {schedule.warmup_steps} steps), device {run.info.device}, world "
        f"{run.info.world_size}"
    )
    if schedule.warmup_steps >= run.stop_at > run.step:
        log(
            f"warning: the warmup takes {schedule.warmup_steps} steps but this run stops at step {run.stop_at}: the "
            f"peak lr {schedule.peak:.3g} is never reached (the last lr is "
            f"{schedule(run.stop_at - 1):.3g}); shorten it with --set optim.warmup_steps=N or run longer"
        )


def _loop(run: _Run, shards: list[str], progress: Progress) -> TrainResult:
    cfg, info = run.cfg, run.info
    metrics = MetricsLog(run.run_dir, info.is_main, cfg.run.tensorboard)
    loader = make_loader(train_stream(cfg, shards, info, run.data_state), cfg.data.num_workers)
    loader.generator = torch.Generator().manual_seed(cfg.run.seed)  # keep the global RNG untouched
    batches = iter(loader)
    run.model.train()
    last_loss, best, saved_path = float("nan"), (math.inf, 0), None
    t_start, start_step = time.perf_counter(), run.step
    t_last, clips_since = t_start, 0
    while run.step < run.stop_at:
        lr = run.plan.schedule.apply(run.optimizer, run.step)
        sums = _accumulate(run, batches)
        grad_norm = _optimizer_step(run)
        run.step += 1
        clips_since += run.plan.global_batch
        last_loss = sums["loss"]
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"loss is {last_loss} at step {run.step}; lower the lr or use bf16/fp32")
        best = min(best, (last_loss, run.step))
        now = time.perf_counter()
        rate = clips_since / max(now - t_last, 1e-9)
        epoch = run.step / run.plan.steps_per_epoch
        progress.step(run.step, epoch, last_loss, lr, rate)
        if progress.due(run.step):
            record = {"step": run.step, "epoch": epoch, "lr": lr, **D.mean_across(sums, info)}
            eta = (now - t_start) / max(run.step - start_step, 1) * (run.stop_at - run.step)
            record.update(grad_norm=grad_norm, clips_per_s=rate, eta_s=eta)
            if run.scaler.is_enabled():
                record["loss_scale"] = float(run.scaler.get_scale())
            metrics.write(record)
            t_last, clips_since = now, 0
        if run.step % cfg.run.save_every == 0 or run.step == run.stop_at:
            saved_path = save_checkpoint(run)
            if saved_path is not None:
                progress.log(f"saved checkpoint {saved_path} (step {run.step})")
    progress.close()
    metrics.close()
    del batches
    D.shutdown()
    seconds = time.perf_counter() - t_start
    steps_run = run.step - start_step
    summary = {
        "stage": cfg.stage, "step": run.step, "steps_run": steps_run, "total_steps": run.plan.total_steps,
        "seconds": round(seconds, 3), "clips_per_s": steps_run * run.plan.global_batch / max(seconds, 1e-9),
        "last_loss": last_loss, "best_loss": best[0], "best_step": best[1], "run_dir": str(run.run_dir),
        "checkpoint": str(saved_path or ckpt_io.resolve(run.run_dir)) if run.step else None,
    }  # fmt: skip
    return TrainResult(run.run_dir, run.step, last_loss, saved_path, summary)


def _accumulate(run: _Run, batches: Any) -> dict[str, float]:
    """``grad_accum`` micro-batches: forward, loss, backward; the mean loss (and its parts)."""
    accum, model = max(1, run.cfg.optim.grad_accum), run.model
    sums: dict[str, float] = {}
    for micro in range(accum):
        try:
            batch = next(batches)
        except DataError as exc:  # raised in a loader worker: torch wraps it in its traceback
            raise DataError(one_line(exc)) from None
        run.data_state.advance(*batch["pos"], batch.get("cursor"))
        last_micro = micro == accum - 1
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter on the last micro-step only
            model.set_requires_gradient_sync(last_micro)
        sync = nullcontext() if (last_micro or not hasattr(model, "no_sync")) else model.no_sync()
        with sync, _autocast(run.info, run.cfg.run.precision):
            loss, parts = run.strategy.loss(model, run.forward, batch, run.step, micro)
            run.scaler.scale(loss / accum).backward()
        sums["loss"] = sums.get("loss", 0.0) + loss.item() / accum
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
    return sums


def _optimizer_step(run: _Run) -> float:
    """Unscale, clip, step (skipped on a non-finite gradient without a scaler); the gradient norm."""
    if run.scaler.is_enabled():
        run.scaler.unscale_(run.optimizer)
    max_norm = run.cfg.optim.clip_grad if run.cfg.optim.clip_grad > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm))
    if not math.isfinite(grad_norm) and not run.scaler.is_enabled():
        if run.info.is_main:
            print(f"[avf-train {run.cfg.stage}] warning: non-finite gradient norm at step {run.step}; update skipped")
    else:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _autocast(info: D.DistInfo, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=info.device.type, dtype=dtype)


def save_checkpoint(run: _Run) -> Path | None:
    """Collective (every rank gathers RNG and loader states); rank 0 writes the file."""
    cfg, info = run.cfg, run.info
    rank_states = {
        "rng": D.gather_objects(ckpt_io.rng_state(), info),
        "data": D.gather_objects(run.data_state.to_dict(), info),
    }
    payload: dict[str, Any] = {
        "stage": cfg.stage,
        "model_name": resolve_model_name(cfg.model.name),
        "scheduler": run.plan.schedule.state_dict(),
        "scaler": run.scaler.state_dict(),
        "step": run.step,
        "epoch": run.step / run.plan.steps_per_epoch,
        "config": to_dict(cfg),
    }
    if class_names(cfg) is not None:
        space = run_labels(cfg).space
        payload["class_names"] = list(space.classes)
        if space.protocol:
            payload["label_protocol"] = space.protocol
    path = ckpt_io.save_training_state(
        run.run_dir, payload, run.model, run.optimizer, cfg.run.fsdp, rank_states, info.is_main, cfg.run.keep_last
    )
    if info.distributed:
        torch.distributed.barrier()
    return path
