"""Section ``attention``: xformers ``memory_efficient_attention`` against PyTorch SDPA through
``avf_models.attention`` on the same inputs: largest absolute difference of the output and of
the three input gradients, each kernel's distance to an fp32 reference, and forward and
forward+backward time.

The shapes are the models' own attention calls at the benchmark batch sizes (encoder-visible
tokens, decoder tokens of AVF-MAE++ and of HiCMAE-B, which decodes every masked token), in the
(B, N, H, D) layout both kernels take. Without xformers (the CPU dry run, or a wheel that was not
carried) only SDPA is measured and the record says why.
"""

from __future__ import annotations

import argparse
from typing import Any

from common import BATCHES, append_record, ms_stats, run_section, section_args, timed_calls


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iters", type=int, default=20, help="timed calls per kernel and shape")
    p.add_argument("--xformers-note", default="", help="why xformers may be missing (from prepare's manifest)")


def shapes(dry_run: bool) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(label, (B, N, H, D)) of the attention calls the step benchmark makes."""
    from avf_models import get_config

    out = []
    batches = (2,) if dry_run else BATCHES
    base = get_config("avfmae_pp_tiny" if dry_run else "avfmae_pp_base")
    hicmae = get_config("hicmae_base")
    for b in batches:
        head = base.embed_dim // base.num_heads
        out.append((f"{base.name} video encoder", (b, base.num_visible, base.num_heads, head)))
        dec_head = base.decoder_embed_dim // base.decoder_num_heads
        n_dec = base.num_visible + base.num_decode
        out.append((f"{base.name} video decoder", (b, n_dec, base.decoder_num_heads, dec_head)))
        if not dry_run:
            n_hic = hicmae.num_visible + hicmae.num_decode
            dh = hicmae.decoder_embed_dim // hicmae.decoder_num_heads
            out.append(("hicmae_base video decoder", (b, n_hic, hicmae.decoder_num_heads, dh)))
    return out


def measure(name: str, qkvg: tuple, ref: Any, ref_grads: list, rec: dict[str, Any], iters: int, device: str):
    """One kernel on the inputs: its distance to the fp32 reference and its times go into ``rec``;
    returns (output, input gradients) in fp32 for the kernel-to-kernel comparison."""
    import torch

    from avf_models import attention

    q, k, v, g = qkvg
    attention.set_backend(name)
    qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
    out = attention.attention(qi, ki, vi)
    out.backward(g)
    result = (out.detach().float(), [t.grad.float() for t in (qi, ki, vi)])
    rec[f"{name}_vs_fp32_fwd"] = float((result[0] - ref).abs().max())
    rec[f"{name}_vs_fp32_bwd"] = max(float((a - b).abs().max()) for a, b in zip(result[1], ref_grads, strict=True))
    x = [t.clone().requires_grad_() for t in (q, k, v)]

    def fwd() -> None:
        with torch.no_grad():
            attention.attention(*x)

    def fwd_bwd() -> None:
        attention.attention(*x).backward(g)

    fwd()
    fwd_bwd()
    ms, _ = timed_calls(fwd, iters, device)
    rec[f"{name}_fwd_ms"] = ms_stats(ms)["ms_median"]
    ms, _ = timed_calls(fwd_bwd, iters, device)
    rec[f"{name}_fwd_bwd_ms"] = ms_stats(ms)["ms_median"]
    return result


def main() -> int:
    args = section_args(__doc__, _extra)

    def body() -> None:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from avf_models import attention

        device = args.device
        cuda = device.startswith("cuda")
        dtype = torch.bfloat16 if cuda else torch.float32
        backends = ["sdpa"]
        if cuda and attention.xformers_available():
            backends.append("xformers")
            missing = None
        elif not cuda:
            missing = "xformers runs on CUDA only (dry run: SDPA alone)"
        else:
            missing = args.xformers_note or "xformers not importable on this machine"
        for label, shape in shapes(args.dry_run):
            gen = torch.Generator(device="cpu").manual_seed(0)
            q, k, v, g = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(4))
            # fp32 reference: the math kernel, the definition of softmax(QK^T/sqrt(d))V
            ref_in = [t.float().clone().requires_grad_() for t in (q, k, v)]
            with sdpa_kernel(SDPBackend.MATH):
                ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in ref_in)).transpose(1, 2)
            ref.backward(g.float())
            ref = ref.detach()
            ref_grads = [t.grad for t in ref_in]
            rec: dict[str, Any] = {
                "section": "attention",
                "status": "ok",
                "where": label,
                "shape_bnhd": list(shape),
                "dtype": str(dtype).replace("torch.", ""),
            }
            results = {}
            for name in backends:
                try:
                    results[name] = measure(name, (q, k, v, g), ref, ref_grads, rec, args.iters, device)
                except Exception as exc:  # an xformers wheel whose kernels fail here: say so, keep SDPA's
                    if name == "sdpa":
                        raise
                    missing = f"failed: {type(exc).__name__}: {exc}"[:300]
            if "xformers" in results:
                (o1, g1), (o2, g2) = results["sdpa"], results["xformers"]
                rec["max_abs_diff_fwd"] = float((o1 - o2).abs().max())
                rec["max_abs_diff_bwd"] = max(float((a - b).abs().max()) for a, b in zip(g1, g2, strict=True))
                rec["xformers_speedup_fwd_bwd"] = round(rec["sdpa_fwd_bwd_ms"] / rec["xformers_fwd_bwd_ms"], 3)
            else:
                rec["xformers"] = missing
            attention.set_backend("auto")
            append_record(args.out, rec)

    return run_section("attention", body, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
