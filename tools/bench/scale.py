"""avf-data at corpus scale (not a test): what grows with the corpus, and what must not.

    uv run python tools/bench/scale.py ../shared/realdev [--sizes 8 64 512] \
        [--synthetic 16384 131072] [--full] [--loader-clips 1000000]

1. Real builds: N short inputs (5 s pieces cut from the recordings in DIR, repeated under
   other names up to N) curated with the default settings (2 workers). Per N: wall seconds
   per input, the driver's peak RSS (the build's own process; workers have their own budget),
   shards and their sizes, files in the output folder, a rerun of the finished build, inspect.
2. Bookkeeping grown synthetically (``synthetic_build.py``: real log lines, sparse shards) to
   16 k and 131 k inputs (``--full``: 1.36 M, the paper's corpus): per N, with the driver's
   peak RSS and wall time each: a resume that curates 8 more real inputs (and packs, seals,
   writes every output), a rerun with nothing to do, writing the outputs and report from the
   logs, a resume with no checkpoint (the whole log replayed), inspect, and the sync pass
   (random SyncNet weights; the synthetic shards already scored, the new ones scored now).
3. The training loader over a synthetic set of ``--loader-clips`` clips (one real shard of
   tiny clips, hard-linked under 100 names): time to the first batch when a run resumes 0,
   10 k and 100 k clips into an epoch, from the cursor a checkpoint holds, from a checkpoint
   without one (positions found by running the shuffle on numbers), and by reading through
   the skipped samples (what the loader did before).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "data"))  # random SyncNet weights in the official format

from synthetic_build import fake_build, fake_sync_log  # noqa: E402

PIECE_SECONDS = 5.0

DRIVER = r"""
import json, sys, time


def peak_rss_mb():
    # VmHWM, not ru_maxrss: the latter keeps the peak of the parent image this process was forked from
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024

what, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if what == "build":
    from avf_data.build import build
    stats = build(sys.argv[3:], out, workers=2, progress=False)
    info = {"clips": stats["clips"], "inputs_processed": stats["run"]["inputs_processed"]}
elif what == "outputs":
    from avf_data.store.folder import OutputFolder
    from avf_data.store.outputs import write_outputs
    (OutputFolder(out).stats).unlink(missing_ok=True)
    write_outputs(OutputFolder(out), {}, thumbnails=False)
    info = {}
elif what == "replay":
    from avf_data.store.build_store import BuildStore
    from avf_data.store.folder import OutputFolder
    folder = OutputFolder(out)
    folder.state.unlink()
    store = BuildStore(folder, 512_000_000)
    info = {"replayed_lines": store.open().replayed_lines}
    store.close()
elif what == "inspect":
    from avf_data.inspect_cmd import summarize
    info = {"samples": summarize(out)["samples"]}
elif what == "sync":
    from avf_data.sync_pass import run_sync_pass
    stats = run_sync_pass(out, sys.argv[3], progress=False)
    info = {"clips_scored": stats["sync_pass"]["clips_scored"]}
info["wall"] = time.perf_counter() - t0
info["rss_mb"] = peak_rss_mb()
print(json.dumps(info))
"""


def run_driver(what: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", DRIVER, what, str(out), *args], capture_output=True, text=True, env=env, timeout=7200
    )
    if r.returncode != 0:
        raise SystemExit(f"{what} {out}: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- real inputs


def cut_pieces(src: Path, work: Path) -> list[Path]:
    """Every recording in ``src`` cut into consecutive 5 s pieces with their audio (cached)."""
    from avf_data.demo import write_av
    from avf_data.media import load_media

    pieces_dir = work / "pieces"
    done = pieces_dir / ".done"
    if done.exists():
        return sorted(pieces_dir.glob("*.mp4"))
    pieces_dir.mkdir(parents=True, exist_ok=True)
    for video in sorted(src.glob("*.mp4")):
        media = load_media(video)
        per = int(PIECE_SECONDS * media.fps)
        hop = int(round(media.sample_rate / media.fps))
        for k in range(0, len(media.frames) - per + 1, per):
            write_av(
                pieces_dir / f"{video.stem}_{k // per:02d}.mp4",
                media.frames[k : k + per],
                media.audio[k * hop : (k + per) * hop],
                fps=media.fps,
                sample_rate=media.sample_rate,
            )
    done.touch()
    return sorted(pieces_dir.glob("*.mp4"))


def inputs_of(pieces: list[Path], n: int, folder: Path) -> list[str]:
    """``n`` inputs: the pieces, then hard links to them under other names (other input ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        piece = pieces[i % len(pieces)]
        target = folder / f"{i:06d}_{piece.name}"
        if not target.exists():
            os.link(piece, target)
        out.append(str(target))
    return out


def folder_files(out: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(out))


def shard_sizes(out: Path) -> str:
    sizes = [p.stat().st_size / 1e6 for p in (out / "shards").glob("*.tar")]
    if not sizes:
        return "0"
    if len(sizes) == 1:
        return f"1 x {sizes[0]:.1f} MB"
    return f"{len(sizes)} x {min(sizes):.0f}-{statistics.median(sizes):.0f}-{max(sizes):.0f} MB"


def real_builds(pieces: list[Path], sizes: list[int], work: Path) -> list[str]:
    rows = [
        "| N inputs | wall s / input | driver peak RSS | clips | shards (min-median-max) | files in folder "
        "| rerun (nothing to do) | inspect |",
        "|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for n in sizes:
        out = work / f"real-{n}"
        shutil.rmtree(out, ignore_errors=True)
        paths = inputs_of(pieces, n, work / "inputs")
        b = run_driver("build", out, *paths)
        again = run_driver("build", out, *paths)
        ins = run_driver("inspect", out)
        rows.append(
            f"| {n} | {b['wall'] / n:.3f} | {b['rss_mb']:.0f} MB | {b['clips']} | {shard_sizes(out)} "
            f"| {folder_files(out)} | {again['wall']:.2f} s, {again['rss_mb']:.0f} MB | {ins['wall']:.2f} s |"
        )
        print(rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------- synthetic bookkeeping


def synthetic(pieces: list[Path], sizes: list[int], work: Path) -> list[str]:
    from syncnet_fixtures import write_weights

    weights = write_weights(work / "syncnet_v2.model")
    rows = [
        "| N inputs | log | shards | resume (+8 real) | rerun (nothing to do) | outputs + report "
        "| resume without checkpoint | inspect | sync pass (+new shards) | sync pass (nothing new) |",
        "|---:|---:|---:|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        out = work / f"synthetic-{n}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        info = fake_build(out, n)
        made = time.perf_counter() - t0
        fake_sync_log(out, weights)
        real = inputs_of(pieces, 8, work / "pending")
        listing = out / "inputs.txt"
        with open(listing, "a") as fh:
            fh.writelines(p + "\n" for p in real)

        def cell(d: dict) -> str:
            return f"{d['wall']:.1f} s, {d['rss_mb']:.0f} MB"

        resume = run_driver("build", out, str(listing))
        rerun = run_driver("build", out, str(listing))
        outputs = run_driver("outputs", out)
        replay = run_driver("replay", out)
        ins = run_driver("inspect", out)
        sync = run_driver("sync", out, str(weights))
        sync_again = run_driver("sync", out, str(weights))
        rows.append(
            f"| {n} | {info['log_bytes'] / 1e6:.0f} MB | {info['shards']} | {cell(resume)} | {cell(rerun)} "
            f"| {cell(outputs)} | {cell(replay)} | {ins['wall']:.2f} s | {cell(sync)} | {cell(sync_again)} |"
        )
        print(rows[-1], f"(bookkeeping made in {made:.0f} s)", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------- loader


def loader_shards(work: Path, clips: int, per_shard: int = 10_000) -> list[str]:
    """``clips`` tiny clips as ``clips / per_shard`` hard links of one real shard."""
    import numpy as np

    from avf_data.shards import ClipSample, ShardWriter

    folder = work / "loader"
    base = folder / "base-000000.tar"
    if not base.exists():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
        with ShardWriter(folder, prefix="base", max_count=per_shard) as writer:
            sample = ClipSample(key="x", frames=frames, audio=np.zeros(5120, np.float32)).to_wds()
            for i in range(per_shard):
                writer.write({**sample, "__key__": f"c{i:06d}"})
    names = []
    for k in range(max(1, clips // per_shard)):
        shard = folder / f"set-{k:06d}.tar"
        if not shard.exists():
            os.link(base, shard)
            shutil.copy(folder / "base-000000.idx.json", folder / f"set-{k:06d}.idx.json")
        names.append(str(shard))
    return names


def loader_table(work: Path, clips: int) -> list[str]:
    import numpy as np

    from avf_train.data import ClipStream, StreamState
    from avf_train.sample_order import SeekableShuffle, UnitSamples, skip_state
    from avf_train.transforms import ClipTransformConfig

    shards = loader_shards(work, clips)
    cfg = ClipTransformConfig(mode="pretrain", num_frames=4, sampling_rate=2, image_size=32)
    batch = 8
    kw = dict(train=True, seed=0, num_workers=1, shuffle_buffer=256)
    next(iter(ClipStream(shards, cfg, batch, **kw)))  # warm-up: imports, the first decode
    rows = [
        f"| clips into the epoch ({len(shards) * 10_000} clips) | from the cursor | without a cursor "
        "| reading through (before) |",
        "|---:|---:|---:|---:|",
    ]
    for skip in (0, 10_000, 100_000):
        skip_batches = skip // batch
        probe = ClipStream(shards, cfg, batch, **kw)
        samples = probe._unit_samples(0, 0)
        seed = np.random.default_rng(np.random.SeedSequence([0, 3, 0, 0]))
        t0 = time.perf_counter()
        total = samples.total()
        cursor = {"pass": 0, "sample": skip, "repeat": 0, "shuffle": skip_state(256, seed, total, skip)}
        find = time.perf_counter() - t0  # what the cursor saves a resume (the loader did this)
        state = StreamState(num_workers=1, batch_size=batch)
        if skip_batches:
            state.workers[0] = (0, skip_batches)
            state.cursors[0] = cursor
        t0 = time.perf_counter()
        next(iter(ClipStream(shards, cfg, batch, state=state, **kw)))
        with_cursor = time.perf_counter() - t0
        state.cursors.clear()
        t0 = time.perf_counter()
        next(iter(ClipStream(shards, cfg, batch, state=state, **kw)))
        without = time.perf_counter() - t0
        # before: the samples of the pass read one by one through the buffer up to the resume point
        t0 = time.perf_counter()
        shuffle = SeekableShuffle(256, np.random.default_rng(np.random.SeedSequence([0, 3, 0, 0])))
        for i, _ in enumerate(shuffle(UnitSamples(samples.shards, 0, 1, probe._shard_counts).iter_from(0))):
            if i >= skip:
                break
        through = time.perf_counter() - t0 + with_cursor
        rows.append(f"| {skip} | {with_cursor:.2f} s | {without:.2f} s | {through:.2f} s |")
        print(rows[-1], f"(finding the cursor by simulation alone: {find:.2f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recordings", type=Path, help="folder of real talking-face recordings (../shared/realdev)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[8, 64, 512], help="real inputs per build")
    ap.add_argument("--synthetic", type=int, nargs="*", default=[16_384, 131_072], help="inputs of bookkeeping")
    ap.add_argument("--full", action="store_true", help="also 1.36 M inputs of bookkeeping (minutes, ~3 GB of log)")
    ap.add_argument("--loader-clips", type=int, default=1_000_000)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="avf-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    pieces = cut_pieces(args.recordings, work)
    print(f"{len(pieces)} pieces of {PIECE_SECONDS:g} s from {args.recordings}; scratch {work}\n", flush=True)
    tables = []
    if args.sizes:
        tables.append(("Real builds (default settings, 2 workers)", real_builds(pieces, args.sizes, work)))
    synth = list(args.synthetic) + ([1_360_000] if args.full else [])
    if synth:
        tables.append(("Bookkeeping grown synthetically (wall, driver peak RSS)", synthetic(pieces, synth, work)))
    if args.loader_clips:
        tables.append(("Loader: time to the first batch after resuming", loader_table(work, args.loader_clips)))
    for title, rows in tables:
        print(f"\n### {title}\n")
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
