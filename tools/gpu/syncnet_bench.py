"""Section ``syncnet``: SyncNet scoring speed on the GPU (fp32 and bf16), and whether bf16 changes
any offset or keep decision on the demo clips.

There are no official SyncNet weights on the GPU machine (nothing can be downloaded there), so
the network is the project's own ``SyncNetV2`` with random weights: speed does not depend on the
values, and the bf16-vs-fp32 comparison asks only whether the same network decides the same
under both precisions (with random weights every clip fails the confidence threshold, so the
offsets and the confidences carry the comparison). The clips are the demo inputs with one
talking face; their SyncNet crops are cut around the head where the demo draws it (no face
detector runs here).

Two speeds: ``scorer`` is ``SyncNetScorer.score_many`` as curation calls it (MFCC and window
packing on the CPU, the network on the device), in video frames per second; ``network`` is the
network alone on a full batch of windows already on the device (one window per frame), the
ceiling the scorer could reach.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from common import append_record, run_section, section_args, sync

# Demo inputs with one face where the demo draws it: centred in the 640x360 frame, 230 px tall.
CLIPS = ("single_face", "shifted_audio", "long_silence")
HEAD_BOX = (229.0, 65.0, 411.0, 295.0)  # x0, y0, x1, y1 around that head (width 182 = 230 x 190/240)


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=512, help="windows per forward pass (the GPU setting)")
    p.add_argument("--repeat", type=int, default=4, help="copies of the clip set per timed call")
    p.add_argument("--calls", type=int, default=3, help="timed calls (median)")
    p.add_argument("--max-frames", type=int, default=0, help="cut each clip to this many frames (0 = whole)")


def load_items(paths: dict[str, str], max_frames: int) -> list[tuple[str, Any]]:
    """(name, SyncInput) per demo clip: reference crops cut around the demo head, 16 kHz audio."""
    import numpy as np

    from avf_data.media import load_media
    from avf_data.stages.sync import SyncInput
    from avf_data.stages.syncnet_input import array_cutter, reference_crops

    items = []
    for name in CLIPS:
        media = load_media(paths[name])
        frames = media.frames[:max_frames] if max_frames else media.frames
        audio = media.audio[: int(round(len(frames) * media.sample_rate / media.fps))]
        boxes = np.tile(np.array(HEAD_BOX), (len(frames), 1))
        crops = reference_crops(array_cutter(frames), boxes)
        items.append((name, SyncInput(crops, audio, 25.0, media.sample_rate, "reference")))
    return items


def compare(fp32: list[tuple[Any, str | None]], bf16: list[tuple[Any, str | None]]) -> dict[str, Any]:
    """How far bf16 (or a second pass) moves the same network's results: equal offsets and keep decisions, and the
    largest change of the confidence and of the distance-per-shift curve (the numbers an offset
    decision reads), next to the smallest spread of an fp32 curve for scale."""
    pairs = list(zip(fp32, bf16, strict=True))
    curves = [(a.mean_dists, b.mean_dists) for (a, _), (b, _) in pairs if a.mean_dists and b.mean_dists]
    return {
        "n": len(pairs),
        "offsets_equal": sum(a.offset_frames == b.offset_frames for (a, _), (b, _) in pairs),
        "keep_equal": sum((ca is None) == (cb is None) for (_, ca), (_, cb) in pairs),
        "max_abs_diff_confidence": max(abs(a.confidence - b.confidence) for (a, _), (b, _) in pairs),
        "max_abs_diff_mean_dists": max(
            (max(abs(x - y) for x, y in zip(u, v, strict=True)) for u, v in curves), default=None
        ),
        "min_curve_spread": min((max(u) - min(u) for u, _ in curves), default=None),
    }


def main() -> int:
    args = section_args(__doc__, _extra)

    def body() -> None:
        import torch

        from avf_data.stages.sync import SyncConfig, SyncNetScorer, sync_reject_code
        from avf_data.stages.syncnet import SyncNetV2

        device = args.device
        cuda = device.startswith("cuda")
        paths = json.loads((args.work / "assets.json").read_text())["demo"]
        named = load_items(paths, args.max_frames)
        items = [it for _, it in named]
        frames_per_set = sum(len(it.frames) for it in items)
        torch.manual_seed(0)
        model = SyncNetV2().to(device).eval()
        decisions: dict[str, list[Any]] = {}
        for precision in ("fp32", "bf16") if cuda else ("fp32",):
            cfg = SyncConfig(device=device, batch_size=args.batch, precision=precision)
            scorer = SyncNetScorer(model, cfg)
            results = scorer.score_many(items)  # also the warm-up (cuDNN autotuning)
            decisions[precision] = [(r, sync_reject_code(r, cfg)) for r in results]
            work = items * args.repeat
            seconds = []
            for _ in range(args.calls):
                sync(device)
                t = time.perf_counter()
                scorer.score_many(work)
                sync(device)
                seconds.append(time.perf_counter() - t)
            scorer_fps = frames_per_set * args.repeat / statistics.median(seconds)
            # the network alone on one batch of windows already on the device
            x = torch.rand(args.batch, 15, 224, 224, device=device).mul_(255)
            x = x.contiguous(memory_format=torch.channels_last)
            a = torch.randn(args.batch, 1, 13, 20, device=device)

            bf16 = precision == "bf16"

            def net(x: torch.Tensor = x, a: torch.Tensor = a, fast: torch.nn.Module = scorer.fast, bf16=bf16) -> None:
                with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                    fast.lip(x)
                    fast.aud(a)

            net()
            sync(device)
            t = time.perf_counter()
            for _ in range(args.calls):
                net()
            sync(device)
            net_fps = args.batch * args.calls / (time.perf_counter() - t)
            append_record(
                args.out,
                {
                    "section": "syncnet",
                    "status": "ok",
                    "kind": "speed",
                    "precision": precision,
                    "device": device,
                    "weights": "random",
                    "batch": args.batch,
                    "clips": len(work),
                    "frames": frames_per_set * args.repeat,
                    "scorer_frames_per_s": round(scorer_fps, 1),
                    "network_frames_per_s": round(net_fps, 1),
                },
            )
        if not cuda:  # the comparison's code still runs: fp32 against a second fp32 pass
            cfg = SyncConfig(device=device, batch_size=args.batch, precision="fp32")
            decisions["fp32 again"] = [
                (r, sync_reject_code(r, cfg)) for r in SyncNetScorer(model, cfg).score_many(items)
            ]
        per_clip = []
        for i, (name, _) in enumerate(named):
            row: dict[str, Any] = {"clip": name}
            for precision, rows in decisions.items():
                r, code = rows[i]
                row[precision] = {
                    "offset": int(r.offset_frames),
                    "confidence": round(float(r.confidence), 4),
                    "keep": code is None,
                    "code": code,
                }
            per_clip.append(row)
        rec: dict[str, Any] = {"section": "syncnet", "status": "ok", "kind": "decisions", "weights": "random"}
        rec["clips"] = per_clip
        rec["compared"] = list(decisions)
        rec.update(compare(*decisions.values()))
        if not cuda:
            rec["note"] = "bf16 needs CUDA: fp32 against a second fp32 pass"
        append_record(args.out, rec)

    return run_section("syncnet", body, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
