"""Curation on real recordings (not a test): what a default build keeps, what sync scores look
like for in-sync, shifted and wrong-speaker audio, speed and memory.

    uv run python tools/bench/real.py ../shared/realdev [--workers 2] [--stress]

1. ``build`` with default settings on the recordings as they are: per-stage acceptance
   (seconds in / out), reject codes, frames per CPU-second of the workers, peak RSS per worker.
2. Variants it makes itself from every recording (video stream copied, audio re-encoded):
   audio shifted by +-2, +-5, +-12 frames (positive = audio delayed) and another recording's
   audio ("other"). Built with sync measured, it prints per variant the measured offsets and
   confidences, and how many clips an enforcing threshold would keep.
3. ``--stress``: one worker alone on a 1080p upscale, a 4K upscale and a 10-minute 1080p
   file (the 1080p one repeated by remuxing), each with its frames per CPU-second and peak
   RSS, against plain decode of the same file (decode only, and decode + conversion to the
   pipeline's analysis size), all in frames per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from curation import decode_rates  # same folder: plain decode in the same unit

SHIFTS = (-12, -5, -2, 2, 5, 12)


# --------------------------------------------------------------------------- making variants


def _audio16k(path: Path) -> np.ndarray:
    from avf_data.media import MediaReader

    with MediaReader(path) as r:
        out = []
        while True:
            piece = r.audio.read(16000 * 10)
            out.append(piece)
            if r.audio._exhausted and not r.audio._pending:
                break
        audio = np.concatenate(out)
        return audio[: max(1, r.audio.covered)]


def remux_with_audio(src: Path, dst: Path, audio: np.ndarray, sr: int = 16000) -> Path:
    """Copy ``src``'s video packets into ``dst`` (mkv) with ``audio`` as its PCM track."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        aout = out.add_stream("pcm_s16le", rate=sr)
        aout.layout = "mono"
        for packet in inp.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            out.mux(packet)
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        for i in range(0, pcm.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, i : i + 4096]), format="s16", layout="mono")
            frame.sample_rate = sr
            for p in aout.encode(frame):
                out.mux(p)
        for p in aout.encode():
            out.mux(p)
    return dst


def shifted(audio: np.ndarray, frames: int, sr: int = 16000, fps: float = 25.0) -> np.ndarray:
    """Audio delayed by ``frames`` video frames (negative: advanced), same length."""
    n = int(round(abs(frames) * sr / fps))
    if frames > 0:
        return np.concatenate([np.zeros(n, np.float32), audio[: len(audio) - n]])
    return np.concatenate([audio[n:], np.zeros(n, np.float32)])


def make_vfr(src: Path, dst: Path, jitter_ms: float = 15.0, seed: int = 0) -> Path:
    """A phone-style variable-frame-rate copy of ``src``: every frame's timestamp moved by up to
    ``jitter_ms`` (order kept), same pictures and audio, so the copy is still in sync."""
    from fractions import Fraction

    import av

    rng = np.random.default_rng(seed)
    audio = _audio16k(src)
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        vout.time_base = vout.codec_context.time_base = Fraction(1, 1000)
        vout.options = {"crf": "18", "preset": "veryfast", "bf": "0"}
        aout = out.add_stream("pcm_s16le", rate=16000)
        aout.layout = "mono"
        last = -1
        for frame in inp.decode(vin):
            t = int(round(float(frame.time) * 1000 + rng.uniform(-jitter_ms, jitter_ms)))
            t = max(t, last + 1)
            last = t
            vf = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            vf.pts, vf.time_base = t, Fraction(1, 1000)
            for p in vout.encode(vf):
                out.mux(p)
        for p in vout.encode():
            out.mux(p)
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        for i in range(0, pcm.shape[1], 4096):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, i : i + 4096]), format="s16", layout="mono")
            af.sample_rate = 16000
            for p in aout.encode(af):
                out.mux(p)
        for p in aout.encode():
            out.mux(p)
    return dst


def make_variants(files: list[Path], folder: Path) -> dict[str, str]:
    """Variant files -> variant name ("shift+5", "other", ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    audios = {f: _audio16k(f) for f in files}
    names: dict[str, str] = {}
    for i, f in enumerate(files):
        a = audios[f]
        for k in SHIFTS:
            p = remux_with_audio(f, folder / f"{f.stem}_shift{k:+d}.mkv", shifted(a, k))
            names[str(p)] = f"shift{k:+d}"
        other = audios[files[(i + 1) % len(files)]]
        other = np.resize(other, len(a)) if len(other) < len(a) else other[: len(a)]
        p = remux_with_audio(f, folder / f"{f.stem}_other.mkv", other)
        names[str(p)] = "other"
    return names


# --------------------------------------------------------------------------- measuring


def run_build(inputs: list[str], out: Path, workers: int, overrides: dict | None = None) -> dict:
    from avf_data.build import build
    from avf_data.config import load_config

    cfg = load_config(overrides=overrides or {})
    return build(inputs, out, cfg, workers=workers, progress=False)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def stage_table(stats: dict) -> None:
    print(f"{'stage':<8} {'seconds in':>10} {'seconds out':>11} {'kept':>6} {'CPU s':>7}")
    cpu = stats.get("stage_cpu_seconds", {})
    for name, d in stats["stages"].items():
        kept = d["seconds_out"] / d["seconds_in"] if d["seconds_in"] else 1.0
        print(f"{name:<8} {d['seconds_in']:>10.1f} {d['seconds_out']:>11.1f} {kept:>6.0%} {cpu.get(name, 0):>7.2f}")
    extra = {k: v for k, v in cpu.items() if k not in stats["stages"]}
    if extra:
        print("other CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in extra.items()))


def sync_table(
    manifest: list[dict], variant_of: dict[str, str], max_offset: int = 3, min_conf: float | None = None
) -> None:
    """Per variant: measured offsets and confidences of its clips."""
    by: dict[str, list[dict]] = {}
    for r in manifest:
        by.setdefault(variant_of.get(r["source"], "in sync"), []).append(r)
    print(
        f"{'variant':<10} {'clips':>5} {'offsets (frames)':<34} {f'|off|<={max_offset}':>8} "
        f"{'conf median':>11} {'conf range':>13}"
    )
    for name in ["in sync", *[f"shift{k:+d}" for k in SHIFTS], "other"]:
        rows = [r for r in by.get(name, []) if r.get("sync_offset") is not None]
        if not rows:
            continue
        offs = [int(r["sync_offset"]) for r in rows]
        confs = [float(r["sync_confidence"]) for r in rows]
        ok = sum(abs(o) <= max_offset and (min_conf is None or c >= min_conf) for o, c in zip(offs, confs, strict=True))
        print(
            f"{name:<10} {len(rows):>5} {' '.join(f'{o:+d}' for o in offs)[:34]:<34} {ok / len(rows):>8.0%} "
            f"{statistics.median(confs):>11.2f} {min(confs):>6.2f}-{max(confs):<6.2f}"
        )


def upscale(src: Path, dst: Path, width: int, height: int, seconds: float | None = None) -> Path:
    """Re-encode ``src`` at ``width x height`` (the face grows with it), keeping its audio."""
    import av
    import cv2

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin, ain = inp.streams.video[0], inp.streams.audio[0]
        vout = out.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.options = {"crf": "20", "preset": "ultrafast"}
        aout = out.add_stream("aac", rate=ain.rate)
        limit = seconds if seconds is not None else 1e9
        for packet in inp.demux():
            for frame in packet.decode():
                if frame.time is not None and frame.time > limit:
                    continue
                if packet.stream.type == "video":
                    img = frame.to_ndarray(format="rgb24")
                    h, w = img.shape[:2]
                    s = max(width / w, height / h)
                    img = cv2.resize(img, (int(w * s + 0.5), int(h * s + 0.5)), interpolation=cv2.INTER_CUBIC)
                    y0, x0 = (img.shape[0] - height) // 2, (img.shape[1] - width) // 2
                    vf = av.VideoFrame.from_ndarray(
                        np.ascontiguousarray(img[y0 : y0 + height, x0 : x0 + width]), format="rgb24"
                    )
                    for p in vout.encode(vf):
                        out.mux(p)
                else:
                    frame.pts = None
                    for p in aout.encode(frame):
                        out.mux(p)
        for stream in (vout, aout):
            for p in stream.encode():
                out.mux(p)
    return dst


def repeat_remux(src: Path, dst: Path, times: int) -> Path:
    """``src`` played ``times`` times in a row, by copying packets with shifted timestamps."""
    import av

    with av.open(str(dst), "w") as out:
        streams = None
        offsets: dict[int, int] = {}
        for _ in range(times):
            with av.open(str(src)) as inp:
                if streams is None:
                    streams = {
                        s.index: out.add_stream_from_template(s) for s in (inp.streams.video[0], inp.streams.audio[0])
                    }
                last: dict[int, int] = {}
                for packet in inp.demux(inp.streams.video[0], inp.streams.audio[0]):
                    if packet.dts is None:
                        continue
                    i = packet.stream.index
                    off = offsets.get(i, 0)
                    packet.pts = None if packet.pts is None else packet.pts + off
                    packet.dts += off
                    last[i] = max(last.get(i, 0), (packet.pts or packet.dts) + (packet.duration or 0))
                    packet.stream = streams[i]
                    out.mux(packet)
                offsets = {i: v + 1 for i, v in last.items()}
    return dst


def stress(files: list[Path], tmp: Path) -> None:
    src = max(files, key=lambda f: f.stat().st_size)
    print(f"\n## one worker on large inputs (made from {src.name})\n")
    cases = [
        ("1080p", upscale(src, tmp / "up1080.mp4", 1920, 1080)),
        ("4K (10 s)", upscale(src, tmp / "up4k.mp4", 3840, 2160, seconds=10)),
        ("1080p 10 min", None),
    ]
    cases[2] = (
        "1080p 10 min",
        repeat_remux(cases[0][1], tmp / "long1080.mp4", max(1, int(600 // max(1.0, _seconds(cases[0][1]))) + 1)),
    )
    print(
        f"{'input':<14} {'seconds':>8} {'decode only':>12} {'decode+scale':>13} {'pipeline':>9} "
        f"{'peak RSS MB':>12}   (frames per CPU-second)"
    )
    for name, path in cases:
        dec, dec_scale = decode_rates(str(path))
        out = tmp / f"stress-{name.split()[0]}-{len(name)}"
        r = subprocess.run([sys.executable, __file__, "--one", str(path), str(out)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name:<14} failed: {r.stderr[-500:]}")
            continue
        st = json.loads(r.stdout.strip().splitlines()[-1])
        print(
            f"{name:<14} {st['seconds_in']:>8.1f} {dec:>12.0f} {dec_scale:>13.0f} "
            f"{st['run']['frames_per_cpu_second']:>9.0f} {st['peak_worker_rss_mb']:>12.0f}"
        )


def _seconds(path: Path) -> float:
    from avf_data.media import probe_seconds

    return probe_seconds(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, nargs="?", help="folder of real recordings")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stress", action="store_true", help="also 1080p, 4K and 10-minute inputs, one worker")
    ap.add_argument("--no-variants", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:  # a build in its own process (clean peak RSS), stats as the last line
        stats = run_build([args.one[0]], Path(args.one[1]), 1)
        print(json.dumps(stats))
        return 0
    if args.folder is None:
        ap.error("give the folder of real recordings")
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in {".mp4", ".mkv", ".mov", ".webm"})
    tmp = Path(tempfile.mkdtemp(prefix="avf-real-"))
    print(f"# {len(files)} recordings in {args.folder} plus a VFR copy of one, {args.workers} workers, temp {tmp}\n")
    vfr = make_vfr(files[0], tmp / f"{files[0].stem}_vfr.mkv")  # phone-style copy, still in sync
    t0 = time.perf_counter()
    stats = run_build([str(f) for f in files] + [str(vfr)], tmp / "orig", args.workers)
    run = stats["run"]
    print(
        f"## default build: kept {stats['seconds_accepted']:.1f} of {stats['seconds_in']:.1f} s "
        f"({stats['seconds_accepted'] / max(stats['seconds_in'], 1e-9):.0%}), {stats['clips']} clips, "
        f"{run['frames_per_cpu_second']:.0f} frames per CPU-second, peak worker RSS "
        f"{stats['peak_worker_rss_mb']:.0f} MB, {time.perf_counter() - t0:.0f} s wall\n"
    )
    stage_table(stats)
    print(
        "\nreject codes: "
        + (", ".join(f"{c} {v['count']}x {v['seconds']:.1f} s" for c, v in stats["rejects_by_code"].items()) or "none")
    )
    rows = [r for r in read_jsonl(tmp / "orig" / "manifest.jsonl") if r["source"] == str(vfr)]
    print(
        f"VFR copy of {files[0].name} (timestamps jittered +-15 ms): kept {sum(r['seconds'] for r in rows):.1f} "
        f"of {_seconds(vfr):.1f} s, source_vfr={sorted({r['source_vfr'] for r in rows})}"
    )
    if not args.no_variants:
        variant_of = make_variants(files, tmp / "variants")
        vstats = run_build(list(variant_of), tmp / "variants-out", args.workers)
        manifest = read_jsonl(tmp / "orig" / "manifest.jsonl") + read_jsonl(tmp / "variants-out" / "manifest.jsonl")
        method = stats["sync_scorer"]
        print(
            f"\n## sync scores by variant ({method}; measured, not enforced; "
            f"variant build kept {vstats['seconds_accepted']:.0f} of {vstats['seconds_in']:.0f} s)\n"
        )
        sync_table(manifest, variant_of)
    if args.stress:
        stress(files, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
