"""A sync expert trained on real recordings (not a test): how well it tells sync from not, how
fast it trains, and what out-of-sync training clips cost.

    uv run python tools/bench/sync_expert.py ../shared/realdev [--steps 60] [--planted 0.3] [--keep DIR]

1. Every recording is cut at 70 % of its length (video re-encoded at CRF 18, the audio kept as
   PCM sample for sample) and both halves are curated with ``avf-data build`` (default
   settings): the first 70 % of each recording is the training corpus, the last 30 % the test
   corpus, so no second of a test clip was seen in training.
2. ``avf-train syncnet`` (a subprocess: its CPU time is counted whole) trains experts:
   ``clean`` on the training corpus; ``planted`` on a copy in which ``--planted`` of the clips
   have their audio shifted by 6-15 frames (random sign), as an unfiltered corpus might;
   ``round 2`` on the clips of that copy which ``planted``'s own rule keeps (avf-data's scoring
   path, the expert's sidecar thresholds); ``trim`` (``--trim``) on the planted copy with
   ``syncnet.trim`` (the highest-loss share of each batch left out).
3. Every expert is evaluated on 2-second segments (46 windows) of the test clips, one every
   0.5 s, embedded once through avf-data's scorer: in sync against the audio shifted by ±2, ±5
   and ±12 frames (the clip's own audio, earlier or later) and against another recording's
   audio. AUC ranks the segments by the confidence at offset 0 (median over the ±15 shifts of
   the mean distance, minus the distance at shift 0: what the offset search sees when the clip
   is in sync); accuracy applies the expert's own calibrated rule (``|offset|`` and confidence
   from its sidecar) and is balanced: (in-sync kept + shifted rejected) / 2. The rule keeps
   ``|offset| <= max_offset_frames`` by design, so ±2 is inside it whenever that is 2 or 3.
   A second table gives the ±5 AUC per test recording: a recording whose sound is not its
   speaker's voice (a music bed, a voice-over) stays at chance for any expert, and a recording
   with fewer than 2 s of test clips has no segment (n/a).
4. Speed: video windows trained per CPU-second of the training process (all its threads),
   and CPU seconds of everything the bench did.

Caveats: seven recordings are a small corpus (the test set is ~30 s); ``--steps`` bounds the
training so that the default run stays within ~25 minutes of CPU on a 2-core machine, which is
far less than a SyncNet needs to learn lip motion (see the note printed under the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

SHIFTS = (2, 5, 12)
SEGMENT = 46  # windows: 2 s of video
STRIDE = 12  # windows: 0.5 s
BATCH, WINDOWS, MAX_SHIFT = 4, 8, 8


# --------------------------------------------------------------------------- corpora


def split_recording(src: Path, head: Path, tail: Path, share: float = 0.7) -> float:
    """Write the first ``share`` of ``src`` to ``head`` and the rest to ``tail`` (mkv: H.264 at
    CRF 18, the audio as PCM, cut at the same instant); returns the duration."""
    import av

    with av.open(str(src)) as inp:
        duration = float(inp.duration / 1e6)
        vin, ain = inp.streams.video[0], inp.streams.audio[0]
        rate, sr, channels = vin.average_rate, ain.rate, ain.channels
        cut = duration * share
        frames: dict[int, list] = {0: [], 1: []}
        for f in inp.decode(vin):
            frames[int(float(f.time) >= cut)].append((float(f.time), f.to_ndarray(format="rgb24")))
        inp.seek(0)
        chunks = [(float(f.time), _planar(f, channels)) for f in inp.decode(ain)]
    t0 = chunks[0][0]
    audio = np.concatenate([c for _, c in chunks], axis=1)
    k = int(round((cut - t0) * sr))
    _write_part(head, frames[0], rate, audio[:, :k], sr, t0, 0.0)
    _write_part(tail, frames[1], rate, audio[:, k:], sr, cut, cut)
    return duration


def _planar(frame, channels: int) -> np.ndarray:
    a = frame.to_ndarray()
    a = a if frame.format.is_planar else a.reshape(-1, channels).T
    return a.astype(np.float32) / (32768.0 if a.dtype == np.int16 else 1.0)


def _write_part(dst: Path, frames: list, rate, audio: np.ndarray, sr: int, audio_start: float, base: float) -> None:
    import av

    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(dst), "w") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.height, vs.width = frames[0][1].shape[:2]
        vs.pix_fmt, vs.time_base = "yuv420p", Fraction(1, 1000)
        vs.codec_context.time_base = Fraction(1, 1000)
        vs.options = {"crf": "18", "preset": "veryfast", "bf": "0"}
        ch = audio.shape[0]
        aus = out.add_stream("pcm_s16le", rate=sr)
        aus.layout = "stereo" if ch == 2 else "mono"
        for t, img in frames:
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = int(round((t - base) * 1000)), Fraction(1, 1000)
            out.mux(vs.encode(vf))
        out.mux(vs.encode())
        packed = (np.clip(audio, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)
        for j in range(0, audio.shape[1], 4096):
            af = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(packed[:, j * ch : (j + 4096) * ch]), format="s16", layout=aus.layout.name
            )
            af.sample_rate, af.time_base = sr, Fraction(1, sr)
            af.pts = int(round((audio_start - base) * sr)) + j
            out.mux(aus.encode(af))
        out.mux(aus.encode())


def build_corpora(files: list[Path], tmp: Path) -> dict[str, Path]:
    """The training and test corpora (avf-data build of the 70 % / 30 % parts); a ``--keep``
    folder that has both already is reused."""
    from avf_data.build import build

    if all((tmp / part / "stats.json").is_file() for part in ("train", "test")):
        print(f"corpora reused from {tmp}")
        return {part: tmp / part for part in ("train", "test")}
    for f in files:
        split_recording(f, tmp / "parts" / "train" / f"{f.stem}.mkv", tmp / "parts" / "test" / f"{f.stem}.mkv")
    out = {}
    for part in ("train", "test"):
        inputs = sorted(str(p) for p in (tmp / "parts" / part).glob("*.mkv"))
        stats = build(inputs, tmp / part, workers=0, progress=False)
        print(f"{part}: {len(inputs)} parts -> {stats['clips']} clips, {stats['seconds_accepted']:.1f} s kept")
        out[part] = tmp / part
    return out


def rewrite_shards(src: Path, dst: Path, change) -> None:
    """Copy the shards of build ``src`` into ``dst/shards``, each sample through ``change``
    (a dict of members, or None to leave the sample out), with fresh indexes."""
    from avf_data.shards import iter_raw_samples
    from avf_data.tars import write_index, write_tar

    (dst / "shards").mkdir(parents=True, exist_ok=True)
    for shard in sorted((src / "shards").glob("*.tar")):
        records = (change({k: v for k, v in s.items() if k != "__url__"}) for s in iter_raw_samples([str(shard)]))
        target = dst / "shards" / shard.name
        write_index(target, write_tar(target, [r for r in records if r is not None]))


def plant(train: Path, dst: Path, share: float, seed: int) -> dict[str, int]:
    """A copy of the training shards with ``share`` of the clips' audio shifted by 6-15 frames
    (random sign, zero-padded); returns the planted keys and their shifts."""
    from avf_data.shards import decode_audio, encode_wav, iter_raw_samples

    keys = [s["__key__"] for s in iter_raw_samples(sorted(str(p) for p in (train / "shards").glob("*.tar")))]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(keys), int(round(share * len(keys))), replace=False)
    shifts = {keys[i]: int(rng.integers(6, 16) * rng.choice([-1, 1])) for i in sorted(chosen)}

    def change(record: dict) -> dict:
        if record["__key__"] in shifts:
            audio, sr = decode_audio(record["wav"])
            record["wav"] = encode_wav(shifted(audio, shifts[record["__key__"]]), sr)
        return record

    rewrite_shards(train, dst, change)
    return shifts


def shifted(audio: np.ndarray, frames: int, sr: int = 16000) -> np.ndarray:
    """Audio delayed by ``frames`` 25 fps frames (negative: advanced), same length, zero-padded."""
    n = abs(frames) * sr // 25
    if frames > 0:
        return np.concatenate([np.zeros(n, np.float32), audio[: len(audio) - n]])
    return np.concatenate([audio[n:], np.zeros(n, np.float32)])


# --------------------------------------------------------------------------- training


def train_expert(data: Path, out: Path, steps: int, extra: list[str], device: str = "cpu") -> dict:
    """``avf-train syncnet`` in a subprocess, its lr schedule spanning ``steps``; its CPU seconds
    (all threads) and windows trained. Batches of ``BATCH`` clips, or all the clips when fewer
    are left (a second round on the clips an expert kept)."""
    from avf_data.shards import shard_counts

    clips = sum(shard_counts(sorted(str(p) for p in (data / "shards").glob("*.tar"))))
    batch = max(2, min(BATCH, clips))
    epochs = steps / max(1, clips // batch)
    cmd = [
        sys.executable, "-m", "avf_train.cli", "syncnet", "--data", str(data / "shards" / "*.tar"), "--out", str(out),
        "--max-steps", str(steps), "--batch-size", str(batch), "--num-workers", "0", "--precision", "bf16",
        "--device", device, "--epochs", f"{epochs:g}", "--set", "run.tensorboard=false", "--set", "run.log_every=10",
        "--set", f"syncnet.windows={WINDOWS}", "--set", f"syncnet.max_shift={MAX_SHIFT}",
        "--set", "syncnet.calibration_clips=6", "--set", "optim.warmup_epochs=0", "--lr", "3e-4", *extra,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"avf-train syncnet failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads((out / "summary.json").read_text())
    windows = summary["steps_run"] * batch * WINDOWS
    return {"out": out, "cpu": cpu, "wall": time.perf_counter() - t0, "windows": windows, "summary": summary}


# --------------------------------------------------------------------------- evaluation


def embed_clips(weights: Path, corpus: Path, device: str = "cpu") -> tuple[object, list[dict]]:
    """The expert's scorer (its sidecar rule applied) and every clip's embeddings, through
    avf-data's scoring path (the inputs its sync pass builds)."""
    from avf_data.shards import iter_raw_samples
    from avf_data.stages.sync import SyncConfig, build_sync_scorer
    from avf_data.stages.sync_calibration import apply_calibration
    from avf_data.sync_pass import prepare_sample

    cfg = apply_calibration(SyncConfig(batch_size=64, device=device), weights)[0]
    scorer = build_sync_scorer(cfg, weights)
    clips = []
    for sample in iter_raw_samples(sorted(str(p) for p in (corpus / "shards").glob("*.tar"))):
        inp, kind = prepare_sample(sample, 1.8, use_source=cfg.input != "crop")
        (v, a), meta = scorer.embed_many([inp])[0], json.loads(sample["json"])
        clips.append({"key": sample["__key__"], "recording": Path(meta["source"]).stem, "v": v, "a": a, "kind": kind})
    return scorer, clips


def offset0_score(result) -> float:
    """How much nearer shift 0 is than the median shift (high when the clip is in sync)."""
    d = np.asarray(result.mean_dists)
    return float(np.median(d) - d[len(d) // 2])


def segment_results(scorer, clips: list[dict]) -> dict[str, list]:
    """Scorer results of every test segment, each with its recording: in sync, shifted by ±d,
    another recording's audio."""
    out: dict[str, list] = {"in sync": [], **{f"±{d}": [] for d in SHIFTS}, "other": []}
    for c in clips:
        v, a, rec = c["v"], c["a"], c["recording"]
        n = min(len(v), len(a))
        others = [o for o in clips if o["recording"] != rec and len(o["a"]) >= SEGMENT]
        for s in range(0, n - SEGMENT + 1, STRIDE):
            seg = v[s : s + SEGMENT]
            out["in sync"].append((rec, scorer.result(seg, a[s : s + SEGMENT])))
            for d in SHIFTS:
                for start in (s - d, s + d):  # audio d frames late / early
                    if 0 <= start and start + SEGMENT <= n:
                        out[f"±{d}"].append((rec, scorer.result(seg, a[start : start + SEGMENT])))
            if others:
                o = others[(s // STRIDE) % len(others)]["a"]
                t = s % (len(o) - SEGMENT + 1)
                out["other"].append((rec, scorer.result(seg, o[t : t + SEGMENT])))
    return out


def auc(pos: list[float], neg: list[float]) -> float:
    if not pos or not neg:
        return float("nan")
    p, q = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > q).mean() + 0.5 * (p == q).mean())


def evaluate(weights: Path, corpus: Path, device: str = "cpu") -> dict[str, dict]:
    """Per negative kind: segments, AUC, balanced accuracy of the expert's own rule; and per
    test recording the AUC against ±5 frames (``by recording``), which shows whether a
    recording's sound can be told from its own delay at all."""
    scorer, clips = embed_clips(weights, corpus, device)
    res = segment_results(scorer, clips)
    cfg = scorer.cfg

    def kept(r) -> bool:
        return r.valid and abs(r.offset_frames) <= cfg.max_offset_frames and r.confidence >= cfg.min_confidence_syncnet

    sync = [r for _, r in res["in sync"]]
    kept_sync = float(np.mean([kept(r) for r in sync]))
    table: dict[str, dict] = {"in sync": {"n": len(sync), "kept": kept_sync}}
    for name in [k for k in res if k != "in sync"]:
        neg = [r for _, r in res[name]]
        rejected = float(np.mean([not kept(r) for r in neg])) if neg else float("nan")
        table[name] = {
            "n": len(neg),
            "auc": auc([offset0_score(r) for r in sync], [offset0_score(r) for r in neg]),
            "acc": (kept_sync + rejected) / 2,
            "rejected": rejected,
        }
    table["by recording"] = {
        rec: auc(
            [offset0_score(r) for q, r in res["in sync"] if q == rec],
            [offset0_score(r) for q, r in res["±5"] if q == rec],
        )
        for rec in sorted({q for q, _ in res["in sync"]})
    }
    return table


def score_training_clips(weights: Path, corpus: Path, device: str = "cpu") -> dict[str, bool]:
    """Which clips of ``corpus`` an expert's rule keeps (the sync pass's decision, in memory)."""
    from avf_data.stages.sync import sync_reject_code

    scorer, clips = embed_clips(weights, corpus, device)
    return {c["key"]: sync_reject_code(scorer.result(c["v"], c["a"]), scorer.cfg) is None for c in clips}


# --------------------------------------------------------------------------- report


def print_table(rows: dict[str, dict]) -> None:
    kinds = ["±2", "±5", "±12", "other"]
    head = " | ".join(f"{k} AUC | {k} acc" for k in kinds)
    print(f"| expert | windows | CPU s | windows/CPU-s | in-sync kept | {head} |")
    print("|---|---:|---:|---:|---:|" + "---:|---:|" * len(kinds))
    for name, r in rows.items():
        t, e = r["train"], r["eval"]
        cells = " | ".join(f"{e[k]['auc']:.3f} | {e[k]['acc']:.3f}" for k in kinds)
        print(
            f"| {name} | {t['windows']} | {t['cpu']:.0f} | {t['windows'] / max(t['cpu'], 1e-9):.2f} | "
            f"{e['in sync']['kept']:.2f} | {cells} |"
        )
    first = next(iter(rows.values()))["eval"]
    print(f"\nsegments: {first['in sync']['n']} in sync, " + ", ".join(f"{k} {first[k]['n']}" for k in kinds))


def print_recordings(rows: dict[str, dict]) -> None:
    """AUC in sync against ±5 frames per test recording: a recording whose sound is not its
    speaker's voice (music, voice-over) stays at chance for any expert."""
    recs = list(next(iter(rows.values()))["eval"]["by recording"])
    print("| expert | " + " | ".join(recs) + " |")
    print("|---|" + "---:|" * len(recs))
    for name, r in rows.items():
        cells = (r["eval"]["by recording"][q] for q in recs)
        print(f"| {name} | " + " | ".join("n/a" if np.isnan(x) else f"{x:.3f}" for x in cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="folder of real recordings (e.g. ../shared/realdev)")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per expert (4 clips x 8 windows each)")
    ap.add_argument("--planted", type=float, default=0.3, help="share of training clips with shifted audio")
    ap.add_argument("--trim", type=float, default=0.0, help="also train a trim expert with this syncnet.trim")
    ap.add_argument("--no-robustness", action="store_true", help="the clean expert only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where the experts train and score (cuda on a GPU machine)")
    ap.add_argument("--keep", type=Path, help="work here (kept) instead of a temporary folder")
    args = ap.parse_args(argv)
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in {".mp4", ".mkv", ".mov", ".webm"})
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="avf-sync-expert-"))
    t_cpu = time.process_time()
    print(f"# sync expert on {len(files)} recordings of {args.folder} (first 70 % train, last 30 % test), temp {tmp}\n")
    corpora = build_corpora(files, tmp)
    rows: dict[str, dict] = {}

    def expert(name: str, data: Path, extra: list[str] | None = None) -> Path:
        seed = ["--seed", str(args.seed), *(extra or [])]
        run = train_expert(data, tmp / "runs" / name.replace(" ", "_"), args.steps, seed, args.device)
        weights = run["out"] / "syncnet_expert.model"
        rows[name] = {"train": run, "eval": evaluate(weights, corpora["test"], args.device)}
        print_table({name: rows[name]})  # each row as it comes: a later failure keeps it
        sys.stdout.flush()
        return weights

    expert("clean", corpora["train"])
    if not args.no_robustness:
        planted = plant(corpora["train"], tmp / "planted", args.planted, args.seed)
        first = expert(f"planted {args.planted:.0%}", tmp / "planted")
        keep = score_training_clips(first, tmp / "planted", args.device)
        rewrite_shards(tmp / "planted", tmp / "round2", lambda r: r if keep.get(r["__key__"]) else None)
        caught = sum(not keep[k] for k in planted) / max(len(planted), 1)
        dropped = sum(not v for k, v in keep.items() if k not in planted) / max(len(keep) - len(planted), 1)
        print(f"planted: {len(planted)} of {len(keep)} clips shifted; the planted expert's rule rejects "
              f"{caught:.0%} of them and {dropped:.0%} of the clean ones")  # fmt: skip
        if sum(keep.values()) >= 2:
            expert("round 2", tmp / "round2")
        if args.trim > 0:
            expert(f"trim {args.trim:g}", tmp / "planted", ["--set", f"syncnet.trim={args.trim}",
                   "--set", f"syncnet.trim_after={args.steps // 3}"])  # fmt: skip
    print()
    print_table(rows)
    print("\nAUC in sync against ±5 frames, per test recording:\n")
    print_recordings(rows)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() - t_cpu + children.ru_utime + children.ru_stime
    print(f"\nCPU: {total:.0f} s in all (this process and the training processes), {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
