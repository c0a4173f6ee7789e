"""Curation throughput benchmark (not a test): end-to-end frames/s per CPU core vs plain decode.

    uv run python tools/bench/curation.py [--inputs DIR_OR_FILES...] [--repeat 2] [--workers N]

Without ``--inputs`` it curates the demo inputs (640x360, 25 fps) written to a temp folder.
Per file, one process with every library limited to one thread (= one core):

* decode fps: PyAV decode of the file to RGB arrays, nothing else;
* e2e fps:    avf_data.pipeline.process_input (decode once, all five stages, mp4/wav
              encoding and shard writing) on the same file, best of ``--repeat`` runs;
* per-stage seconds of the e2e run.

With ``--workers N`` it also times a whole ``build`` with N worker processes and reports
frames/s and frames/s per worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def decode_fps(path: str, repeat: int) -> tuple[int, float]:
    import av

    best = 0.0
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        with av.open(path) as c:
            s = c.streams.video[0]
            n = 0
            for f in c.decode(s):
                f.to_ndarray(format="rgb24")
                n += 1
        best = max(best, n / (time.perf_counter() - t0))
    return n, best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="*", default=None)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="also time a full build with N workers")
    args = ap.parse_args(argv)

    from avf_data.build import build, resolve_inputs
    from avf_data.config import BuildConfig
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
    process_input(files[0], None, cfg)  # warm-up: ONNX session, dlib, sync scorer
    rows = []
    stage_tot: dict[str, float] = {}
    tot_frames = tot_dec_t = tot_e2e_t = 0.0
    for f in files:
        import av

        try:
            with av.open(f) as c:
                v = c.streams.video[0]
                size = f"{v.codec_context.width}x{v.codec_context.height}"
        except Exception:
            rows.append((Path(f).name, "-", 0, 0.0, 0.0, "unreadable (rejected)"))
            continue
        n_dec, dfps = decode_fps(f, args.repeat)
        best = None
        for r in range(args.repeat):
            out = tmp / f"out-{r}"
            t0 = time.perf_counter()
            res = process_input(f, out, cfg)
            dt = time.perf_counter() - t0
            if best is None or dt < best[0]:
                best = (dt, res)
        dt, res = best
        n = res["frames"]
        efps = n / dt if dt else 0.0
        outcome = f"{len(res['manifest'])} clip(s)" + (f", rejects: {','.join(sorted({r['stage'] for r in res['rejects']}))}"
                                                       if res["rejects"] else "")
        rows.append((Path(f).name, size, n, dfps, efps, outcome))
        tot_frames += n
        tot_dec_t += n_dec / dfps if dfps else 0
        tot_e2e_t += dt
        for k, v in res["timing"].items():
            stage_tot[k] = stage_tot.get(k, 0.0) + v

    print("\nper core (1 process, 1 thread per library)")
    print(f"{'input':<20} {'size':>9} {'frames':>7} {'decode fps':>11} {'e2e fps':>9}  outcome")
    for name, size, n, dfps, efps, outcome in rows:
        print(f"{name:<20} {size:>9} {n:>7} {dfps:>11.0f} {efps:>9.0f}  {outcome}")
    if tot_e2e_t:
        print(f"{'TOTAL':<20} {'':>9} {int(tot_frames):>7} {tot_frames / tot_dec_t:>11.0f} "
              f"{tot_frames / tot_e2e_t:>9.0f}")
        print("\nstage time share of e2e: " + ", ".join(
            f"{k} {v / tot_e2e_t:.0%} ({1000 * v / tot_frames:.2f} ms/frame)" for k, v in
            sorted(stage_tot.items(), key=lambda kv: -kv[1])))
    if args.workers:
        out = tmp / "build"
        t0 = time.perf_counter()
        stats = build(files, out, cfg, workers=args.workers, progress=False)
        wall = time.perf_counter() - t0
        print(f"\nbuild with {args.workers} workers: {stats['run']['frames_processed']} frames in {wall:.1f} s "
              f"= {stats['run']['frames_per_second']:.0f} frames/s, "
              f"{stats['run']['frames_per_second_per_core']:.0f} per worker (includes pool start-up)")
    print(f"\ncpu: {os.cpu_count()} cores; load average now {os.getloadavg()[0]:.2f} (other processes skew timings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
