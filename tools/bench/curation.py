"""Curation throughput benchmark (not a test), in one unit: frames per CPU-second.

    uv run python tools/bench/curation.py [--inputs DIR_OR_FILES...] [--workers N]

Without ``--inputs`` it curates the demo inputs (640x360, 25 fps) written to a temp folder.
Per file, in this process with every library limited to one thread:

* decode:        PyAV decode of the file, nothing else (the floor for any pipeline);
* decode+scale:  decode plus the conversion to the pipeline's analysis size (RGB, 480 px
                 long side), i.e. plain decode at the pipeline's working resolution;
* pipeline:      ``avf_data.pipeline.process_input`` (decode once, all stages, mp4/wav
                 encoding), from the CPU seconds the pipeline itself records;

and the per-stage CPU seconds of the pipeline runs. With ``--workers N`` it also runs a
whole ``build`` with N worker processes and reports its frames per CPU-second of the
workers and per wall-second. CPU seconds are what a machine full of workers pays, so the
figures hold on a busy machine too (wall-clock ones would not).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def decode_rates(path: str, analysis_side: int = 480) -> tuple[float, float]:
    """Plain decode in frames per CPU-second: (decode only, decode + RGB at the analysis size)."""
    import av

    from avf_data.chunks import FrameImage

    rates = []
    for convert in (False, True):
        t0 = time.process_time()
        n = 0
        with av.open(path) as c:
            s = c.streams.video[0]
            s.codec_context.thread_count = 1
            for f in c.decode(s):
                if convert:
                    img = FrameImage(f)
                    a = min(1.0, analysis_side / max(img.width, img.height))
                    img.scaled(max(2, int(img.width * a) // 2 * 2), max(2, int(img.height * a) // 2 * 2))
                n += 1
        rates.append(n / max(1e-9, time.process_time() - t0))
    return rates[0], rates[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="*", default=None)
    ap.add_argument("--workers", type=int, default=0, help="also run a full build with N workers")
    args = ap.parse_args(argv)

    from avf_data.build import build
    from avf_data.config import BuildConfig
    from avf_data.inputs import resolve_inputs
    from avf_data.pipeline import limit_threads, preload_modules, process_input

    limit_threads()
    preload_modules()
    tmp = Path(tempfile.mkdtemp(prefix="avf-bench-"))
    if args.inputs:
        files = resolve_inputs(args.inputs)
    else:
        from avf_data.demo import make_demo_inputs

        files = [str(p) for p in make_demo_inputs(tmp / "inputs").values()]
    cfg = BuildConfig()
    process_input(files[0], cfg)  # warm-up: ONNX session, dlib, sync scorer
    rows = []
    stage_tot: dict[str, float] = {}
    tot_frames = tot_cpu = tot_dec = tot_dec_scale = 0.0
    for f in files:
        res = process_input(f, cfg)
        n, cpu = res["frames"], res["cpu_seconds"]
        outcome = f"{len(res['manifest'])} clip(s)" + (
            f", rejects: {','.join(sorted({r['code'] for r in res['rejects']}))}" if res["rejects"] else ""
        )
        if n == 0:
            rows.append((Path(f).name, "-", 0, 0.0, 0.0, 0.0, outcome))
            continue
        dec, dec_scale = decode_rates(f)
        size = "x".join(str(v) for v in res.get("source_size") or [])
        rows.append((Path(f).name, size, n, dec, dec_scale, n / cpu if cpu else 0.0, outcome))
        tot_frames += n
        tot_cpu += cpu
        tot_dec += n / dec
        tot_dec_scale += n / dec_scale
        for k, v in res["timing"].items():
            stage_tot[k] = stage_tot.get(k, 0.0) + v

    print("\nframes per CPU-second (1 process, 1 thread per library)")
    print(f"{'input':<20} {'size':>9} {'frames':>7} {'decode':>8} {'decode+scale':>13} {'pipeline':>9}  outcome")
    for name, size, n, dec, dec_scale, pipe, outcome in rows:
        print(f"{name:<20} {size:>9} {n:>7} {dec:>8.0f} {dec_scale:>13.0f} {pipe:>9.0f}  {outcome}")
    if tot_cpu:
        print(
            f"{'TOTAL':<20} {'':>9} {int(tot_frames):>7} {tot_frames / tot_dec:>8.0f} "
            f"{tot_frames / tot_dec_scale:>13.0f} {tot_frames / tot_cpu:>9.0f}"
        )
        print(
            "\npipeline CPU per stage: "
            + ", ".join(
                f"{k} {v / tot_cpu:.0%} ({1000 * v / tot_frames:.2f} ms/frame)"
                for k, v in sorted(stage_tot.items(), key=lambda kv: -kv[1])
            )
        )
    if args.workers:
        out = tmp / "build"
        t0 = time.perf_counter()
        stats = build(files, out, cfg, workers=args.workers, progress=False)
        wall = time.perf_counter() - t0
        run = stats["run"]
        print(
            f"\nbuild with {args.workers} workers: {run['frames_processed']} frames in {wall:.1f} s wall = "
            f"{run['frames_per_second']:.0f} frames per wall-second; {run['frames_per_cpu_second']:.0f} frames "
            f"per CPU-second of the workers; peak worker RSS {stats['peak_worker_rss_mb']:.0f} MB"
        )
    print(f"\ncpu: {os.cpu_count()} cores; load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
