"""Section ``step``: one pre-training step (forward + loss + backward + AdamW) of one model at
one batch size, eager or compiled, on random inputs; one configuration per process.

Compiled means ``torch.compile(model, dynamic=False)``, as the trainer's ``run.compile`` does:
torch's automatic dynamic shapes do not trace the mask generation in torch 2.11, and a step's
shapes never change.

The step is the trainer's without its data: the model is built by the trainer's own
``avf_train.modeling.build_model`` from the pre-training stage defaults (the model draws its own
masks), the optimizer is ``avf_train.optim.build_optimizer`` with the stage's optimizer settings
(the official parameter groups, fused AdamW on CUDA) and the forward runs under bf16 autocast as
in the trainer. Warm-up steps (compilation, cuDNN and allocator warm-up) are timed apart; peak
memory is the steady state's, reset after the warm-up.

With ``--attention auto`` on CUDA the models pick xformers when it imports; if its kernel then
fails on a tiny probe (a wheel built for another CUDA, say), the step falls back to SDPA and the
record says why, so one broken wheel does not cost every step configuration.
"""

from __future__ import annotations

import argparse
import time

from common import (
    MODELS,
    append_record,
    guard_attention,
    model_overrides,
    ms_stats,
    peak_memory_gib,
    run_section,
    section_args,
    sync,
    timed_calls,
)


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (static shapes)")
    p.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (the dry run traces with 'eager')"
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--attention", choices=("auto", "sdpa", "xformers"), default="auto")


def main() -> int:
    args = section_args(__doc__, _extra)
    config = {
        "model": args.model,
        "batch": args.batch,
        "compiled": args.compile,
        **({"compile_backend": args.compile_backend} if args.compile else {}),
        "precision": args.precision,
        "attention_backend": args.attention,
    }

    def body() -> None:
        import torch

        from avf_models import attention, count_parameters
        from avf_train.config import stage_defaults
        from avf_train.modeling import build_model
        from avf_train.optim import build_optimizer

        device = args.device
        attention.set_backend(args.attention)
        fallback = guard_attention(device) if args.attention == "auto" else None
        cfg = stage_defaults("pretrain")
        cfg.model.name = args.model
        cfg.model.overrides = model_overrides(args.model, args.dry_run)
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        model.train()
        optimizer = build_optimizer(model, cfg.optim, lr=cfg.optim.base_lr)
        # static shapes: a pre-training step's shapes never change, and with torch's default
        # (automatic dynamic) the mask generation fails to trace in torch 2.11 (a SymInt size
        # reaches torch.rand in avf_models.masking)
        forward = torch.compile(model, dynamic=False, backend=args.compile_backend) if args.compile else model
        spec = model.input_spec
        video = torch.randn(args.batch, *spec.video_shape, device=device)
        audio = torch.randn(args.batch, *spec.audio_shape, device=device)
        dev_type = torch.device(device).type
        last = {}

        def step() -> None:
            with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                loss = forward(video, audio)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last["loss"] = loss.detach()

        t = time.perf_counter()
        for _ in range(args.warmup):
            step()
        sync(device)
        warmup_s = time.perf_counter() - t
        if dev_type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ms, wall = timed_calls(step, args.steps, device)
        append_record(
            args.out,
            {
                "section": "step",
                **config,
                "status": "ok",
                "device": device,
                "attention": attention.resolve_backend(torch.device(device)),
                "xformers_fallback": fallback,
                "params_m": round(count_parameters(model) / 1e6, 2),
                "steps": args.steps,
                "warmup_steps": args.warmup,
                "warmup_s": round(warmup_s, 2),
                "clips_per_s": round(args.batch * args.steps / wall, 2),
                **{f"step_{k}": v for k, v in ms_stats(ms).items()},
                "peak_mem_gib": round(peak_memory_gib(device), 2),
                "loss": round(float(last["loss"]), 4),
            },
        )

    return run_section("step", body, args.out, config)


if __name__ == "__main__":
    raise SystemExit(main())
