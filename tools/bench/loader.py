"""Is training input-bound? Loader-only clips/s against training-step clips/s.

    uv run --frozen python tools/bench/loader.py                       # CPU, tiny model, demo shards
    uv run --frozen python tools/bench/loader.py --shards 'DIR/shards/*.tar' --model base \
        --device cuda --batch-size 32 --workers 4 8 --steps 30

Three measurements, printed as one table:
  loader      batches from the avf-train stream alone (decode mp4 + wav, augment, fbank), in
              clips/s and in clips per CPU-second of the loader's processes (what a loader core
              delivers, whatever else the machine runs); pre-training batches both as the
              trainer takes them (``device``: uint8 video and waveforms, finished by
              ``model_inputs`` where the model runs) and finished in the workers (``worker``)
  step        forward/backward/AdamW on random tensors of the same shape (no data loading)
  end-to-end  the two together, as a training run sees them
If ``loader`` is below ``step`` the GPU waits for data: add workers or CPU. Without ``--shards`` a
few demo clips (avf_data.demo) are written to a temporary folder first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def demo_shards(folder: Path, clips: int = 12, frames: int = 72) -> str:
    """Talking-face demo clips at 160x160 with real speech, written as avf shards."""
    import cv2

    from avf_data.demo import FPS, SAMPLE_RATE, load_speech, render_talking_face, speech_envelope
    from avf_data.shards import ClipSample, ShardWriter

    speech = load_speech(1)
    hop = SAMPLE_RATE // FPS
    with ShardWriter(folder, prefix="bench", max_count=max(1, clips // 4)) as writer:
        for i in range(clips):
            start = (i * 7 * hop) % max(1, len(speech) - frames * hop)
            audio = speech[start : start + frames * hop].astype(np.float32)
            video = render_talking_face(
                speech_envelope(audio, num_frames=frames), size=(192, 192), head_height=170, seed=i
            )
            video = np.stack([cv2.resize(f, (160, 160), interpolation=cv2.INTER_AREA) for f in video])
            writer.write(
                ClipSample(
                    key=f"bench{i:04d}",
                    frames=video,
                    audio=audio,
                    label=i % 3,
                    meta={"label_name": ["Happy", "Sad", "Angry"][i % 3]},
                )
            )
    return str(folder)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of other processes (loader workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[-1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _transform_config(cfg, mode: str):
    from avf_train.transforms import transform_config

    return transform_config(cfg, mode)


def bench_loader(
    shards: list[str], stage: str, batch: int, workers: int, steps: int, device_features: bool = False
) -> tuple[float, float]:
    """Loader-only (clips/s wall clock, clips per CPU-second of the loader's processes).

    CPU time is what a loader costs whatever else runs on the machine: the sum over this
    process and its workers from the first batch on (prefetched batches still in flight at the
    end count as spent, so the per-core figure errs low).
    """
    from avf_train.config import stage_defaults
    from avf_train.data import ClipStream, make_loader, release

    cfg = stage_defaults(stage)
    mode = "pretrain" if stage == "pretrain" else "finetune"
    stream = ClipStream(
        shards,
        _transform_config(cfg, mode),
        batch,
        train=True,
        num_workers=workers,
        shuffle_buffer=16,
        repeats=1,
        device_features=device_features,
    )
    it = iter(make_loader(stream, workers))
    release(next(it))  # worker start-up is not throughput
    pids = [w.pid for w in getattr(it, "_workers", [])]
    cpu0, t = time.process_time() + _cpu_seconds(pids), time.perf_counter()
    for _ in range(steps):
        release(next(it))  # what model_inputs does once the batch is on the device
    wall, cpu = time.perf_counter() - t, time.process_time() + _cpu_seconds(pids) - cpu0
    del it
    return steps * batch / wall, steps * batch / max(cpu, 1e-9)


def make_model(name: str, stage: str, device: torch.device) -> torch.nn.Module:
    from avf_models import create_model

    if stage == "pretrain":
        return create_model(name, stage="pretrain").to(device)
    return create_model(name, stage="finetune", num_classes=3).to(device)


def train_step(model, opt, video, audio, stage: str, precision: str, device: torch.device) -> None:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        if stage == "pretrain":
            loss = model(video, audio)["loss"]
        else:
            loss = model(video, audio).float().logsumexp(-1).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_step(model, stage: str, batch: int, steps: int, precision: str, device: torch.device) -> float:
    spec = model.input_spec
    video = torch.randn(batch, *spec.video_shape, device=device)
    audio = torch.randn(batch, *spec.audio_shape, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    train_step(model, opt, video, audio, stage, precision, device)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, opt, video, audio, stage, precision, device)
    sync(device)
    return steps * batch / (time.perf_counter() - t)


def bench_end_to_end(model, shards, stage, batch, workers, steps, precision, device) -> float:
    from avf_train.config import stage_defaults
    from avf_train.data import ClipStream, make_loader, model_inputs

    cfg = stage_defaults(stage)
    stream = ClipStream(
        shards,
        _transform_config(cfg, "pretrain" if stage == "pretrain" else "finetune"),
        batch,
        train=True,
        num_workers=workers,
        shuffle_buffer=16,
        device_features=stage == "pretrain",
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    it = iter(make_loader(stream, workers))
    b = next(it)
    train_step(model, opt, *model_inputs(b, device), stage, precision, device)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        train_step(model, opt, *model_inputs(b, device), stage, precision, device)
    sync(device)
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", help="glob/folder of avf shards (default: temporary demo shards)")
    parser.add_argument("--model", default="avfmae_pp_tiny")
    parser.add_argument("--stage", choices=["pretrain", "finetune"], default="pretrain")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--loader-only", action="store_true", help="skip the model measurements")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", choices=["bf16", "fp16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    name = f"avfmae_pp_{args.model}" if args.model in ("tiny", "base", "large", "huge") else args.model

    from avf_train.data import resolve_shards

    with tempfile.TemporaryDirectory() as tmp:
        shards = resolve_shards(args.shards or demo_shards(Path(tmp) / "shards"))
        rows: list[tuple[str, float, float | None]] = []
        for w in args.workers:
            for raw in (True, False) if args.stage == "pretrain" else (False,):
                label = f"loader {'device' if raw else 'worker'} workers={w}"
                rows.append((label, *bench_loader(shards, args.stage, args.batch_size, w, args.steps, raw)))
        if args.loader_only:
            return _print(rows, f"loader only, {args.stage} batch {args.batch_size}, {args.steps} timed steps")
        model = make_model(name, args.stage, device).train()
        rows.append(
            (
                "train step    synthetic",
                bench_step(model, args.stage, args.batch_size, args.steps, precision, device),
                None,
            )
        )
        for w in args.workers:
            rows.append(
                (
                    f"end-to-end    workers={w}",
                    bench_end_to_end(model, shards, args.stage, args.batch_size, w, args.steps, precision, device),
                    None,
                )
            )
    _print(
        rows,
        f"{name} {args.stage} batch {args.batch_size} on {device} ({precision}), {args.steps} timed steps, "
        f"{torch.get_num_threads()} intra-op threads",
    )


def _print(rows: list[tuple[str, float, float | None]], title: str) -> None:
    print(f"\n{title}")
    print(f"{'measurement':<28}{'clips/s':>10}{'clips/CPU-s':>14}")
    print("-" * 52)
    for label, rate, per_core in rows:
        print(f"{label:<28}{rate:>10.2f}{'' if per_core is None else f'{per_core:.2f}':>14}")


if __name__ == "__main__":
    main()
