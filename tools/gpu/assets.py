"""Section ``assets``: the demo inputs (``avf_data.demo.make_demo_inputs``) and demo shards the
SyncNet, ``model_inputs`` and loader sections read, written into the run's scratch folder.

It runs in the background while the GPU sections run, since it needs only CPU cores.
``avf-data build --demo`` would need the curation extra (scenedetect, dlib, librosa, ...), which
the GPU machine has not and the carry budget cannot hold, so the shards are written with the
shard writer itself: talking-face clips at the training crop size (160 px), real speech, in the
format ``avf-data build`` writes. ``--copies`` writes each encoded clip under several keys, so a
loader with many workers gets full batches without encoding hundreds of clips.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import append_record, run_section, section_args

READY = "assets.json"


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clips", type=int, default=32, help="distinct clips rendered and encoded")
    p.add_argument("--copies", type=int, default=10, help="keys each encoded clip is written under")
    p.add_argument("--frames", type=int, default=72, help="frames per clip (the pre-training view spans 64)")
    p.add_argument("--per-shard", type=int, default=32)
    p.add_argument("--jobs", type=int, default=8)


def encode_clip(index: int, frames: int) -> dict[str, bytes]:
    """One talking-face clip (its mouth follows a stretch of the demo speech), encoded as a shard
    sample."""
    import numpy as np

    from avf_data.demo import FPS, SAMPLE_RATE, load_speech, render_talking_face, speech_envelope
    from avf_data.shards import ClipSample

    speech = load_speech(1 + index % 2)
    hop = SAMPLE_RATE // FPS
    start = (index * 7 * hop) % max(1, len(speech) - frames * hop)
    audio = speech[start : start + frames * hop].astype(np.float32)
    video = render_talking_face(speech_envelope(audio, num_frames=frames), size=(160, 160), head_height=140, seed=index)
    return ClipSample(key=f"clip{index:04d}", frames=video, audio=audio).to_wds()


def write_shards(folder: Path, clips: int, copies: int, frames: int, per_shard: int, jobs: int) -> int:
    from avf_data.shards import ShardWriter

    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        encoded = list(pool.map(encode_clip, range(clips), [frames] * clips))
    n = 0
    with ShardWriter(folder, prefix="demo", max_count=per_shard) as writer:
        for copy in range(copies):
            for i, sample in enumerate(encoded):
                writer.write({**sample, "__key__": f"c{copy:02d}clip{i:04d}"})
                n += 1
    return n


def main() -> int:
    args = section_args(__doc__, _extra)

    def body() -> None:
        from avf_data.demo import make_demo_inputs

        work: Path = args.work
        t = time.perf_counter()
        demo = make_demo_inputs(work / "demo")
        t_demo = time.perf_counter() - t
        n = write_shards(work / "shards", args.clips, args.copies, args.frames, args.per_shard, args.jobs)
        ready = {"demo": {k: str(v) for k, v in demo.items()}, "shards": str(work / "shards"), "clips": n}
        (work / READY).write_text(json.dumps(ready))
        append_record(
            args.out,
            {
                "section": "assets",
                "status": "ok",
                "demo_inputs_s": round(t_demo, 1),
                "shard_clips": n,
                "distinct_clips": args.clips,
                "total_s": round(time.perf_counter() - t, 1),
            },
        )

    return run_section("assets", body, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
