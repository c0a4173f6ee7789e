"""SyncNet throughput: video frames scored per second, per CPU core and on a GPU when present.

    uv run python tools/bench/syncnet.py [--frames 100] [--repeats 3] [--threads 1,2]

Rows (random weights in the official format; speed does not depend on the values):

* ``v1 port`` - the first port's path: 3-D convolutions on (1, 3, T, 224, 224) chunks,
  separate BatchNorm/ReLU, ``no_grad``, 20 windows per batch, input rebuilt from the
  160 px crop per batch.
* ``scorer`` - :class:`SyncNetScorer` now: 2-D channels-last convolutions with folded
  BatchNorm, ``inference_mode``, one embedding per window reused by every shift, windows
  of several clips batched (``score_many``); fp32 on CPU, bf16 autocast on CUDA.
* ``source crops`` - cutting the reference 224 px crops from a decoded 640x360 H.264
  source (seek + nearest-timestamp decode + cut), the sync pass's other per-frame cost.

CPU rows count frames per CPU-second of this process (= per core, whatever the thread
count; other processes on a shared machine do not inflate it), best of ``--repeats``; GPU
rows are wall-clock. Arithmetic floor on CPU: ~3.6 GFLOP per frame (lip branch 3.1, audio 0.5).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _weights(folder: Path) -> str:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "data"))
    from syncnet_fixtures import random_official_state_dict

    path = folder / "syncnet_v2.model"
    torch.save(random_official_state_dict(0, 0.01), path)
    return str(path)


def _best(fn, repeats: int, cpu: bool = True) -> float:
    """Best of ``repeats``: CPU seconds of this process (all its threads) for CPU rows, so
    that other processes on a shared machine do not count; wall seconds for GPU rows."""
    clock = time.process_time if cpu else time.perf_counter
    fn()  # warm-up (oneDNN primitive creation, cuDNN autotune)
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        if not cpu:
            import torch

            torch.cuda.synchronize()
        best = min(best, clock() - t)
    return best


def _v1_embed(model, crops160: np.ndarray, audio: np.ndarray, batch: int = 20, device: str = "cpu") -> None:
    """The first port's embedding loop, kept here as the 'before' of the table."""
    import torch

    from avf_data.stages import syncnet as sn

    mfcc = sn.mfcc_psf(np.clip(audio, -1.0, 1.0) * 32768.0, sn.SYNCNET_SAMPLE_RATE)
    n = min(len(crops160), audio.size // 640) - 5
    with torch.no_grad():
        for s in range(0, n, batch):
            e = min(n, s + batch)
            lip = sn.lip_input_from_face_crop(crops160[s : e + 4], 1.8)
            x = torch.from_numpy(lip).permute(1, 0, 2, 3).unsqueeze(0).to(device)
            model.lip_features(x).cpu()
            blocks = np.stack([mfcc[:, 4 * i : 4 * i + 20] for i in range(s, e)])
            model.forward_aud(torch.from_numpy(blocks[:, None]).to(device)).cpu()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100, help="frames per clip scored (default 100 = 4 s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1", help="comma-separated torch thread counts for the CPU rows")
    ap.add_argument("--gpu-batch", type=int, default=512, help="windows per forward pass on the GPU")
    args = ap.parse_args(argv)

    import torch

    from avf_data.stages.sync import SyncConfig, SyncInput, build_sync_scorer

    rng = np.random.default_rng(0)
    t = args.frames
    crops224 = rng.integers(0, 256, (t, 224, 224, 3), dtype=np.uint8)
    crops160 = rng.integers(0, 256, (t, 160, 160, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(t * 640)).astype(np.float32)
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = _weights(Path(tmp))
        for threads in [int(x) for x in args.threads.split(",")]:
            torch.set_num_threads(threads)
            scorer = build_sync_scorer(SyncConfig(batch_size=32), weights)
            dt = _best(lambda s=scorer: _v1_embed(s.model, crops160, audio), args.repeats)
            rows.append(("v1 port (Conv3d, no_grad, batch 20)", f"CPU x{threads}", t / dt))
            items = [SyncInput(crops224, audio)]
            dt = _best(lambda s=scorer, it=items: s.score_many(it), args.repeats)
            rows.append(("scorer (2-D CL, folded BN, fp32)", f"CPU x{threads}", t / dt))
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            for precision in ("fp32", "bf16"):
                scorer = build_sync_scorer(
                    SyncConfig(device="cuda", batch_size=args.gpu_batch, precision=precision), weights
                )
                items = [SyncInput(crops224, audio)] * 8  # several clips share the batches
                dt = _best(lambda s=scorer, it=items: s.score_many(it), args.repeats, cpu=False)
                rows.append((f"scorer ({precision})", f"{name}", 8 * t / dt))
            scorer = build_sync_scorer(SyncConfig(device="cuda"), weights)
            dt = _best(lambda: _v1_embed(scorer.model, crops160, audio, device="cuda"), args.repeats, cpu=False)
            rows.append(("v1 port (Conv3d, no_grad, batch 20)", f"{name}", t / dt))
        torch.set_num_threads(1)
        from avf_data.demo import make_demo_inputs
        from avf_data.stages.syncnet_input import reference_rects
        from avf_data.sync_pass import decode_source_crops

        src = make_demo_inputs(Path(tmp) / "demo")["single_face"]
        rects = reference_rects(np.tile([250.0, 80.0, 390.0, 260.0], (t, 1)))
        dt = _best(lambda: decode_source_crops(src, 2.0, t, rects), args.repeats)
        rows.append(("source crops (decode 640x360 + cut)", "CPU x1", t / dt))
    print(
        f"SyncNet throughput, {t}-frame clips, best of {args.repeats} "
        "(frames/s; CPU rows: frames per CPU-second = per core)\n"
    )
    print(f"| {'path':<38} | {'device':<22} | {'frames/s':>9} |")
    print(f"|{'-' * 40}|{'-' * 24}|{'-' * 11}|")
    for name, dev, fps in rows:
        print(f"| {name:<38} | {dev:<22} | {fps:9.1f} |")
    print(
        f"\nCPU: {os.cpu_count()} cores, torch {torch.__version__}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
