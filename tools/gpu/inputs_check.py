"""Section ``inputs``: ``avf_train.batches.model_inputs`` on CUDA against the CPU path, on real
pre-training batches of the demo shards.

Pre-training batches leave the loader as uint8 video with each view's crop box, waveforms and
gains (``device_features``); ``model_inputs`` crops, resizes and normalises the video and computes
the fbanks where the model runs. Training on a GPU therefore runs that code on CUDA, which CI
never does: this compares it with the CPU path on the same batches (largest absolute difference
of the video and of the fbanks; both are normalised, so about unit scale).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import append_record, run_section, section_args, sync

TOLERANCE = 1e-3


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=2)


def _copy(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its own tensors and without its release handle (``model_inputs`` consumes
    what it is given)."""
    import torch

    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != "release"}


def main() -> int:
    args = section_args(__doc__, _extra)

    def body() -> None:
        from avf_train.batches import model_inputs, release
        from avf_train.config import stage_defaults
        from avf_train.data import ClipStream, make_loader, resolve_shards
        from avf_train.transforms import transform_config

        ready = json.loads((args.work / "assets.json").read_text())
        cfg = stage_defaults("pretrain")
        stream = ClipStream(
            resolve_shards(ready["shards"]),
            transform_config(cfg, "pretrain"),
            args.batch,
            train=True,
            num_workers=0,
            shuffle_buffer=16,
            device_features=True,
        )
        it = iter(make_loader(stream, 0))
        for i in range(args.batches):
            batch = next(it)
            t = time.perf_counter()
            v_cpu, a_cpu = model_inputs(_copy(batch), "cpu")
            cpu_ms = (time.perf_counter() - t) * 1e3
            dev = _copy(batch)
            sync(args.device)
            t = time.perf_counter()
            v_dev, a_dev = model_inputs(dev, args.device)
            sync(args.device)
            dev_ms = (time.perf_counter() - t) * 1e3
            release(batch)
            dv = float((v_dev.cpu() - v_cpu).abs().max())
            da = float((a_dev.cpu() - a_cpu).abs().max())
            append_record(
                args.out,
                {
                    "section": "inputs",
                    "status": "ok" if max(dv, da) <= TOLERANCE else "mismatch",
                    "batch_index": i,
                    "device": args.device,
                    "video_shape": list(v_dev.shape),
                    "audio_shape": list(a_dev.shape),
                    "cropped_views": sum(1 for b in batch.get("box", []) if tuple(b[2:]) != tuple(v_cpu.shape[-2:])),
                    "max_abs_diff_video": dv,
                    "max_abs_diff_audio": da,
                    "tolerance": TOLERANCE,
                    "cpu_ms": round(cpu_ms, 1),
                    "device_ms": round(dev_ms, 1),
                },
            )
        del it

    return run_section("inputs", body, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
