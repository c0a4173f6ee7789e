"""Benchmark one full AVF-MAE++ pre-training step (forward + backward + AdamW) and print a table.

Measures clips/s and peak memory for AVF-MAE++ B/L/H and the HiCMAE-B baseline, at the given batch
sizes, under bf16 autocast, with and without torch.compile.

    # GPU (defaults: B, L, H and HiCMAE-B; batch 32 and 164; eager and compiled)
    uv run --frozen python tools/bench/pretrain_step.py
    uv run --frozen python tools/bench/pretrain_step.py --models base hicmae_base --batch-sizes 32 --compile off
    # CPU (no CUDA): defaults to --tiny, batch 2, eager only
    uv run --frozen python tools/bench/pretrain_step.py --tiny

Peak memory is torch.cuda.max_memory_allocated on CUDA and the process's peak RSS on CPU (so on CPU
it only grows across rows).  Out-of-memory rows are reported as OOM and the run continues.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time

import torch

from avf_models import count_parameters, create_model
from avf_models.config import TINY_WIDTHS

ALIASES = {
    "base": "avfmae_pp_base",
    "large": "avfmae_pp_large",
    "huge": "avfmae_pp_huge",
    "tiny": "avfmae_pp_tiny",
    "hicmae": "hicmae_base",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="model names or aliases (base large huge hicmae tiny); default: base large huge hicmae "
        "on CUDA, tiny + tiny-sized hicmae with --tiny",
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 32 164 (CUDA) or 2 (--tiny)")
    p.add_argument(
        "--compile",
        choices=("off", "on", "both"),
        default="both" if cuda else "off",
        help="torch.compile the model: off, on or both (default both on CUDA, off on CPU)",
    )
    p.add_argument(
        "--tiny", action="store_true", default=not cuda, help="CPU-sized models (default when CUDA is absent)"
    )
    p.add_argument("--steps", type=int, default=10 if cuda else 3, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3 if cuda else 1, help="untimed steps per row (compile happens here)")
    p.add_argument("--no-autocast", action="store_true", help="run in fp32 instead of bf16 autocast")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    args = p.parse_args(argv)
    if args.models is None:
        args.models = ["tiny", "hicmae"] if args.tiny else ["base", "large", "huge", "hicmae"]
    if args.batch_sizes is None:
        args.batch_sizes = [2] if args.tiny else [32, 164]
    return args


def build(name: str, tiny: bool, device: str) -> torch.nn.Module:
    full = ALIASES.get(name, name)
    overrides = TINY_WIDTHS if (tiny and full == "hicmae_base") else {}
    return create_model(full, "pretrain", **overrides).to(device)


def peak_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def bench_row(name: str, batch: int, compiled: bool, args: argparse.Namespace) -> dict:
    device = args.device
    cuda = device.startswith("cuda")
    model = build(name, args.tiny, device)
    n_params = count_parameters(model)
    spec = model.input_spec
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=cuda)
    step_model = torch.compile(model) if compiled else model
    video = torch.randn(batch, *spec.video_shape, device=device)
    audio = torch.randn(batch, *spec.audio_shape, device=device)
    amp = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=not args.no_autocast)

    def step() -> torch.Tensor:
        masks = model.generate_masks(batch, device=device)
        with amp:
            loss = step_model(video, audio, masks=masks).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    row = dict(
        model=model.config.name,
        params=n_params,
        batch=batch,
        compiled=compiled,
        clips_per_s=batch / dt,
        step_ms=dt * 1e3,
        peak_gb=peak_memory_gb(device),
        loss=float(loss.detach()),
    )
    model = opt = step_model = video = audio = None  # free the device memory before the next row
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"device: {dev_name}; torch {torch.__version__}; autocast bf16: {not args.no_autocast}; "
        f"tiny: {args.tiny}; steps {args.steps} (+{args.warmup} warm-up)",
        flush=True,
    )
    header = (
        f"{'model':18s} {'params':>12s} {'batch':>5s} {'compile':>7s} {'clips/s':>9s} {'step ms':>9s} "
        f"{'peak GiB':>9s} {'loss':>7s}"
    )
    rows = []
    for name in args.models:
        for batch in args.batch_sizes:
            for compiled in modes:
                try:
                    r = bench_row(name, batch, compiled, args)
                    line = (
                        f"{r['model']:18s} {r['params']:>12,} {batch:>5d} {str(compiled):>7s} "
                        f"{r['clips_per_s']:>9.2f} {r['step_ms']:>9.1f} {r['peak_gb']:>9.2f} {r['loss']:>7.3f}"
                    )
                except torch.OutOfMemoryError:
                    line = f"{ALIASES.get(name, name):18s} {'':>12s} {batch:>5d} {str(compiled):>7s} {'OOM':>9s}"
                rows.append(line)
                print(line, file=sys.stderr, flush=True)
                gc.collect()
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                    torch._dynamo.reset()
    print()
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
