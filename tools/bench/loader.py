"""Is training input-bound? Loader-only clips/s against training-step clips/s.

    uv run --frozen python tools/bench/loader.py                       # CPU, tiny model, demo shards
    uv run --frozen python tools/bench/loader.py --shards 'DIR/shards/*.tar' --model base \
        --device cuda --batch-size 32 --workers 4 8 --steps 30

Three measurements, printed as one table:
  loader      batches from the avf-train stream alone (decode mp4 + wav, augment, fbank)
  step        forward/backward/AdamW on random tensors of the same shape (no data loading)
  end-to-end  the two together, as a training run sees them
If ``loader`` is below ``step`` the GPU waits for data: add workers or CPU. Without ``--shards`` a
few demo clips (avf_data.demo) are written to a temporary folder first.
"""

from __future__ import annotations

import argparse
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
            audio = speech[start:start + frames * hop].astype(np.float32)
            video = render_talking_face(speech_envelope(audio, num_frames=frames), size=(192, 192),
                                        head_height=170, seed=i)
            video = np.stack([cv2.resize(f, (160, 160), interpolation=cv2.INTER_AREA) for f in video])
            writer.write(ClipSample(key=f"bench{i:04d}", frames=video, audio=audio, label=i % 3,
                                    meta={"label_name": ["Happy", "Sad", "Angry"][i % 3]}))
    return str(folder)


def bench_loader(shards: list[str], stage: str, batch: int, workers: int, steps: int) -> float:
    from avf_train.config import stage_defaults
    from avf_train.data import ClipStream, make_loader
    from avf_train.trainer import transform_config

    cfg = stage_defaults(stage)
    mode = "pretrain" if stage == "pretrain" else "finetune"
    stream = ClipStream(shards, transform_config(cfg, mode), batch, train=True, num_workers=workers,
                        shuffle_buffer=16, repeats=1)
    it = iter(make_loader(stream, workers))
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - t)


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
    from avf_train.data import ClipStream, make_loader
    from avf_train.trainer import transform_config

    cfg = stage_defaults(stage)
    stream = ClipStream(shards, transform_config(cfg, "pretrain" if stage == "pretrain" else "finetune"), batch,
                        train=True, num_workers=workers, shuffle_buffer=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    it = iter(make_loader(stream, workers))
    b = next(it)
    train_step(model, opt, b["video"].to(device), b["audio"].to(device), stage, precision, device)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        train_step(model, opt, b["video"].to(device, non_blocking=True), b["audio"].to(device, non_blocking=True),
                   stage, precision, device)
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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None,
                        help="default: bf16 on CUDA, fp32 on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    name = f"avfmae_pp_{args.model}" if args.model in ("tiny", "base", "large", "huge") else args.model

    from avf_train.data import resolve_shards

    with tempfile.TemporaryDirectory() as tmp:
        shards = resolve_shards(args.shards or demo_shards(Path(tmp) / "shards"))
        rows: list[tuple[str, float]] = []
        for w in args.workers:
            rows.append((f"loader        workers={w}", bench_loader(shards, args.stage, args.batch_size, w, args.steps)))
        model = make_model(name, args.stage, device).train()
        rows.append(("train step    synthetic", bench_step(model, args.stage, args.batch_size, args.steps,
                                                           precision, device)))
        for w in args.workers:
            rows.append((f"end-to-end    workers={w}", bench_end_to_end(model, shards, args.stage, args.batch_size, w,
                                                                        args.steps, precision, device)))
    print(f"\n{name} {args.stage} batch {args.batch_size} on {device} ({precision}), {args.steps} timed steps, "
          f"{torch.get_num_threads()} intra-op threads")
    print(f"{'measurement':<28}{'clips/s':>10}")
    print("-" * 38)
    for label, rate in rows:
        print(f"{label:<28}{rate:>10.2f}")


if __name__ == "__main__":
    main()
