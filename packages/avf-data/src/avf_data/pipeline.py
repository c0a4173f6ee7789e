"""Curation of input files: decode once, run stages 1-5, write shards atomically.

:func:`process_task` is what a worker (process pool or Ray task) runs for ``avf-data build``:
a task is a group of inputs whose clips go into shards shared by the group. It returns a
plain, JSON-serialisable dict (per input: manifest rows, reject rows, per-stage counts) that
the driver appends to the run's done-log once the task's shards are renamed into place.
:func:`process_input` curates one input on its own (own shards, or none: benchmarks,
avf-eval), :func:`curate_video` in memory.

Seconds are accounted in whole frames at the output rate, so for every source
``sum(accepted) + sum(rejected) == input seconds`` exactly (a rejected input that could not
be decoded is one reject row spanning its container duration).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import PIPELINE_VERSION, BuildConfig
from .media import Media, MediaError, iter_media, path_text, probe_seconds
from .shards import ClipSample, ShardWriter
from .stages.crop import crop_clip
from .stages.face_filter import check_faces
from .stages.scene import Segment, detect_cuts, split_scenes
from .stages.silence import split_speech

STAGES = ["decode", "scene", "face", "silence", "crop", "sync", "quality"]


def input_id(path: str | os.PathLike) -> str:
    """Stable id of an input: a hash of its absolute path (bytes, so any encoding works)."""
    raw = os.fsencode(os.path.abspath(os.fspath(path)))
    return hashlib.sha1(raw).hexdigest()[:16]


def clip_key(iid: str, index: int) -> str:
    return f"{iid}_{index:04d}"


# --------------------------------------------------------------------------- per-process context


@dataclass
class WorkerContext:
    """What a worker builds once and reuses for every input: the sync scorer."""

    cfg: BuildConfig
    scorer: Any = None
    scorer_error: str | None = None


_CTX: dict[str, WorkerContext] = {}


def limit_threads() -> None:
    """One worker = one core: keep OpenCV / ONNX / torch from spawning thread pools."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("AVF_ONNX_THREADS", "1")
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # pragma: no cover
        pass


def preload_modules() -> None:
    """Import the heavy libraries once; the local engine calls this before forking workers so
    that every worker inherits them instead of importing them again."""
    import importlib

    for name in ("cv2", "av", "soundfile", "scipy.signal", "librosa", "librosa.feature", "librosa.effects",
                 "scenedetect", "dlib", "onnxruntime", "retinaface", "avf_data.stages.sync",
                 "avf_data.stages.quality"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import librosa

    librosa.feature.rms  # noqa: B018 - resolve the lazy submodules now
    librosa.effects.split  # noqa: B018


def get_context(cfg: BuildConfig, weights: str | None) -> WorkerContext:
    """The per-process context, built on first use (so once per worker process)."""
    key = f"{cfg.to_dict()!r}:{weights}"
    ctx = _CTX.get(key)
    if ctx is None:
        limit_threads()
        ctx = WorkerContext(cfg=cfg)
        try:
            from .stages.sync import build_sync_scorer

            sync_cfg = cfg.sync
            if hasattr(sync_cfg, "face_crop_scale"):  # SyncNet rebuilds its crop from our crop geometry
                sync_cfg = dataclasses.replace(sync_cfg, face_crop_scale=cfg.crop.margin)
            ctx.scorer = build_sync_scorer(sync_cfg, weights or None)
        except ImportError as exc:
            ctx.scorer_error = f"sync stage unavailable: {exc}"
        _CTX.clear()
        _CTX[key] = ctx
    return ctx


# --------------------------------------------------------------------------- result bookkeeping


@dataclass
class InputResult:
    input_id: str
    source: str
    seconds: float = 0.0
    frames: int = 0
    manifest: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    sync_methods: list[str] = field(default_factory=list)
    proc_seconds: float = 0.0
    decode_seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)  # seconds spent per stage

    def tick(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.timing[stage] = round(self.timing.get(stage, 0.0) + now - t0, 4)
        return now

    def count(self, stage: str, n_in: int, n_out: int, s_in: float, s_out: float) -> None:
        d = self.stages.setdefault(stage, {"in": 0, "out": 0, "seconds_in": 0.0, "seconds_out": 0.0})
        d["in"] += n_in
        d["out"] += n_out
        d["seconds_in"] = round(d["seconds_in"] + s_in, 6)
        d["seconds_out"] = round(d["seconds_out"] + s_out, 6)

    def reject(self, stage: str, start: float, end: float, reason: str, **extra: Any) -> dict[str, Any]:
        row = {"source": self.source, "input_id": self.input_id, "start": round(start, 6), "end": round(end, 6),
               "seconds": round(end - start, 6), "stage": stage, "reason": reason}
        row.update(extra)
        self.rejects.append(row)
        return row

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _thumb(out_dir: Path | None, name: str, image: np.ndarray, size: int = 96) -> str | None:
    """Save a small JPEG for the report; returns its path relative to ``out_dir``."""
    if out_dir is None:
        return None
    import cv2

    h, w = image.shape[:2]
    s = size / max(h, w)
    small = cv2.resize(image, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
    rel = Path("thumbs") / f"{name}.jpg"
    path = out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
    if ok:
        path.write_bytes(buf.tobytes())
        return rel.as_posix()
    return None


# --------------------------------------------------------------------------- the pipeline


def _run_stages(path: str, out: Path | None, cfg: BuildConfig, weights: str | None,
                label: dict[str, Any] | None, iid: str, encode: bool) -> tuple[InputResult, list[Any], float]:
    """Decode one input and run stages 1-5. Returns its (unfinished) result, the accepted
    samples (encoded ``{ext: bytes}`` dicts, or ClipSample when ``encode`` is false) in
    manifest order, and the start time. Never raises for a bad input: problems become rows."""
    t0 = time.perf_counter()
    ctx = get_context(cfg, weights)
    res = InputResult(input_id=iid, source=path_text(path))
    thumbs = out if (out is not None and cfg.output.thumbnails) else None
    samples: list[Any] = []  # encoded (mp4/wav bytes): small, unlike raw crops

    def reject_input(reason: str) -> tuple[InputResult, list[Any], float]:
        res.manifest.clear()
        res.rejects.clear()
        res.stages.clear()
        dur = probe_seconds(path) if os.path.exists(os.fspath(path)) else 0.0
        dur = round(float(np.floor(dur * cfg.media.fps + 1e-6)) / cfg.media.fps, 6)
        res.seconds, res.frames = dur, 0
        res.count("decode", 1, 0, dur, 0.0)
        res.reject("decode", 0.0, dur, reason)
        return res, [], t0

    chunk_frames = int(round(cfg.media.chunk_seconds * cfg.media.fps)) if cfg.media.chunk_seconds > 0 else 0
    clip_index = 0
    try:
        chunks = iter_media(path, cfg.media, chunk_frames=chunk_frames)
        while True:
            td = time.perf_counter()
            media = next(chunks, None)
            res.tick("decode", td)
            if media is None:
                break
            res.frames += media.num_frames
            res.seconds = round(res.frames / media.fps, 6)
            if cfg.curate:
                clip_index = _curate(media, res, ctx, thumbs, label, clip_index, samples, encode)
            else:
                clip_index = _whole_clip(media, res, ctx, thumbs, label, clip_index, samples, encode)
            del media
        res.decode_seconds = res.timing.get("decode", 0.0)
        res.count("decode", 1, 1, res.seconds, res.seconds)
    except MediaError as exc:
        samples.clear()
        return reject_input(str(exc))
    except Exception as exc:  # a bug or an unexpected library error: the input is rejected, the run goes on
        samples.clear()
        res.manifest.clear()
        res.rejects.clear()
        res.stages.clear()
        probed = probe_seconds(path) if os.path.exists(os.fspath(path)) else 0.0
        res.seconds = max(res.seconds, round(float(np.floor(probed * cfg.media.fps + 1e-6)) / cfg.media.fps, 6))
        res.count("decode", 1, 0, res.seconds, 0.0)
        res.reject("error", 0.0, res.seconds, f"internal error: {type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc(limit=4))
        return res, [], t0
    return res, samples, t0


def _write_samples(writer: ShardWriter, out: Path, res: InputResult, samples: list[Any]) -> None:
    """Append an input's encoded samples to ``writer``; fills the rows' ``shard`` and ``res.shards``."""
    tw = time.perf_counter()
    for s, row in zip(samples, res.manifest):
        row["shard"] = writer.write(s).relative_to(out).as_posix()
        if row["shard"] not in res.shards:
            res.shards.append(row["shard"])
    res.tick("write", tw)


def process_input(path: str, out_dir: str | os.PathLike | None, cfg: BuildConfig,
                  weights: str | None = None, label: dict[str, Any] | None = None,
                  key_prefix: str | None = None, keep_samples: list[ClipSample] | None = None) -> dict[str, Any]:
    """Curate one input file; write its own shard(s) ``out_dir/shards/<input-id>-NNNNNN.tar``;
    return its result. (``avf-data build`` groups inputs into tasks instead: :func:`process_task`.)

    ``label`` (labelled import) is merged into every sample's json and sets ``cls``.
    ``out_dir=None`` runs the stages without writing anything (benchmarks); with
    ``keep_samples`` (a list) the accepted clips are appended to it unencoded instead.
    Never raises for a bad input: problems become reject rows.
    """
    iid = key_prefix or input_id(path)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        for stale in glob.glob(os.path.join(glob.escape(str(out / "shards")), f"{iid}-*.tar*")):
            os.remove(stale)  # left by an interrupted call that never finished this input
    res, samples, t0 = _run_stages(path, out, cfg, weights, label, iid, encode=keep_samples is None)
    if keep_samples is not None:
        keep_samples.extend(samples)
        return _finish(res, t0)
    if out is not None and samples:
        with ShardWriter(out / "shards", prefix=iid, max_count=max(1, cfg.output.max_clips_per_shard),
                         defer_rename=True) as writer:
            _write_samples(writer, out, res, samples)
    return _finish(res, t0)


def task_id(input_ids: list[str]) -> str:
    """Stable id of a task (a group of inputs): a hash of its sorted input ids. Its shards are
    ``shards/<task id>-NNNNNN.tar``, so a rerun that groups the pending inputs differently
    never reuses the name of a committed shard."""
    return hashlib.sha1("\n".join(sorted(input_ids)).encode("ascii")).hexdigest()[:16]


def task_files(out_dir: str | os.PathLike, tid: str) -> list[str]:
    """The shard files (final and ``.tmp``) a task may have left in ``out_dir/shards``."""
    return glob.glob(os.path.join(glob.escape(os.path.join(os.fspath(out_dir), "shards")), f"{tid}-*.tar*"))


def process_task(items: list[tuple[str, dict[str, Any] | None]], out_dir: str | os.PathLike | None,
                 cfg: BuildConfig, weights: str | None = None, tid: str | None = None,
                 before_input: Any = None) -> dict[str, Any]:
    """Curate a task (several inputs) into shards shared by its inputs; return its result.

    The clips of every input, in input order, go into ``shards/<tid>-NNNNNN.tar`` (a new
    shard every ``output.max_clips_per_shard`` clips). All of them stay ``.tar.tmp`` until
    the last input is done and are then renamed together, so a task's shards appear only
    complete; the driver logs the task (one ``done.jsonl`` line) after that. Returns
    ``{"task_id", "shards", "inputs": [one result per input, as process_input's]}``.
    ``before_input(path)`` is called before each input (test hook of the engines).
    """
    iids = [input_id(p) for p, _ in items]
    tid = tid or task_id(iids)
    out = Path(out_dir) if out_dir is not None else None
    records: list[dict[str, Any]] = []
    if out is None:
        for (path, label), iid in zip(items, iids):
            if before_input is not None:
                before_input(path)
            res, _, t0 = _run_stages(path, None, cfg, weights, label, iid, encode=True)
            records.append(_finish(res, t0))
        return {"task_id": tid, "shards": [], "inputs": records}
    for stale in task_files(out, tid):
        os.remove(stale)  # a crashed earlier try of this very task
    with ShardWriter(out / "shards", prefix=tid, max_count=max(1, cfg.output.max_clips_per_shard),
                     defer_rename=True) as writer:
        for (path, label), iid in zip(items, iids):
            if before_input is not None:
                before_input(path)
            res, samples, t0 = _run_stages(path, out, cfg, weights, label, iid, encode=True)
            if samples:
                _write_samples(writer, out, res, samples)
            del samples
            records.append(_finish(res, t0))
    for rec in records:
        rec["task_id"] = tid
    return {"task_id": tid, "shards": [p.relative_to(out).as_posix() for p in writer.written], "inputs": records}


def curate_video(path: str | os.PathLike, cfg: BuildConfig | None = None,
                 weights: str | None = None) -> tuple[list[ClipSample], list[dict[str, Any]]]:
    """In-memory curation of one video (no files written): accepted clips as ClipSample
    (frames, audio, meta with start/end) in time order, and the reject rows."""
    cfg = cfg or BuildConfig()
    if cfg.output.thumbnails:
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, thumbnails=False))
    clips: list[ClipSample] = []
    res = process_input(os.fspath(path), None, cfg, weights, keep_samples=clips)
    return sorted(clips, key=lambda c: c.meta.get("start", 0.0)), res["rejects"]


def _finish(res: InputResult, t0: float) -> dict[str, Any]:
    res.proc_seconds = round(time.perf_counter() - t0, 4)
    return res.to_dict()


def _curate(media: Media, res: InputResult, ctx: WorkerContext, thumbs: Path | None,
            label: dict[str, Any] | None, clip_base: int, samples: list[Any], encode: bool = True) -> int:
    """Stages 1-5 on one chunk of an input; appends encoded samples; returns the next clip index.
    Frame indices are chunk-relative; rows get absolute seconds."""
    cfg = ctx.cfg
    fps = media.fps
    f0 = media.start_frame
    sec = lambda f: (f + f0) / fps  # noqa: E731
    dur = lambda f: f / fps  # noqa: E731
    frames = media.frames
    work_h, work_w = frames.shape[1:3]
    to_src = media.source_size[0] / work_w  # boxes are reported in source pixels

    def reject_frames(stage: str, a: int, b: int, reason: str, thumb_frame: int | None = None, **extra):
        if thumbs is not None and thumb_frame is not None:
            extra["thumb"] = _thumb(thumbs, f"{res.input_id}/r{len(res.rejects):03d}", frames[thumb_frame])
        res.reject(stage, sec(a), sec(b), reason, **extra)

    tt = time.perf_counter()
    # ---- stage 1: scene cut
    n = media.num_frames
    if cfg.enable_scene:
        cuts = detect_cuts(frames, fps, cfg.scene)
        segments, rejected = split_scenes(n, cuts, fps, cfg.scene, media.audio_coverage)
    else:
        cuts = []
        segments, rejected = split_scenes(n, [], fps, dataclasses.replace(cfg.scene, min_segment_seconds=0.0),
                                          media.audio_coverage)
    for seg, reason in rejected:
        reject_frames("scene", seg.start, seg.end, reason, (seg.start + seg.end) // 2)
    res.count("scene", 1, len(segments), dur(n), dur(sum(s.length for s in segments)))
    tt = res.tick("scene", tt)

    # ---- stage 2: dlib face filter per segment
    kept: list[tuple[Segment, list[float]]] = []
    for seg in segments:
        if not cfg.enable_face:
            kept.append((seg, []))
            continue
        fc = check_faces(frames, seg.start, seg.end, cfg.face)
        if fc.reason:
            reject_frames("face", seg.start, seg.end, fc.reason, (seg.start + seg.end) // 2,
                          dlib_scores=_clean(fc.scores))
        else:
            kept.append((seg, _clean(fc.scores)))
    res.count("face", len(segments), len(kept), dur(sum(s.length for s in segments)),
              dur(sum(s.length for s, _ in kept)))
    tt = res.tick("face", tt)

    # ---- stage 3: silence split
    clips: list[tuple[int, int, Segment, list[float]]] = []
    for seg, dlib_scores in kept:
        if cfg.enable_silence:
            pieces = split_speech(media.audio_slice(seg.start, seg.end), media.sample_rate, seg.length, fps, cfg.silence)
        else:
            from .stages.silence import Piece

            pieces = [Piece(0, seg.length, None)]
        for p in pieces:
            a, b = seg.start + p.start, seg.start + p.end
            if p.reason:
                reject_frames("silence", a, b, p.reason)
            else:
                clips.append((a, b, seg, dlib_scores))
    res.count("silence", len(kept), len(clips), dur(sum(s.length for s, _ in kept)),
              dur(sum(b - a for a, b, _, _ in clips)))
    tt = res.tick("silence", tt)

    # ---- stages 4 and 5 per clip
    counts = {s: [0, 0, 0.0, 0.0] for s in ("crop", "sync", "quality")}
    for idx, (a, b, seg, dlib_scores) in enumerate(clips, start=clip_base):
        key = clip_key(res.input_id, idx)
        L = dur(b - a)
        c = counts["crop"]
        c[0] += 1
        c[2] += L
        tt = time.perf_counter()
        crop = crop_clip(frames[a:b], cfg.crop)
        tt = res.tick("crop", tt)
        if crop.reason:
            reject_frames("crop", a, b, crop.reason, (a + b) // 2, key=key)
            continue
        c[1] += 1
        c[3] += L
        audio = media.audio_slice(a, b)
        meta: dict[str, Any] = {
            "source": res.source, "input_id": res.input_id, "clip_index": idx,
            "start": round(sec(a), 6), "end": round(sec(b), 6), "fps": fps, "sample_rate": media.sample_rate,
            "num_frames": int(b - a), "crop_size": cfg.crop.out_size, "pipeline_version": PIPELINE_VERSION,
            "scene": {"start": round(sec(seg.start), 6), "end": round(sec(seg.end), 6)},
            "boxes": [[round(v * to_src, 1) for v in box] for box in crop.boxes],
            "face_side": round(crop.face_side * to_src, 1),
            "detector": {"retinaface_frames": crop.det_frames, "retinaface_scores": crop.det_scores,
                         "dlib_scores": dlib_scores},
            "source_fps": round(media.source_fps, 3), "source_size": list(media.source_size),
        }
        # stage 5a: sync
        s = counts["sync"]
        s[0] += 1
        s[2] += L
        if ctx.scorer is not None:
            r = ctx.scorer.score(crop.frames, audio, fps=fps, sample_rate=media.sample_rate)
            from .stages.sync import sync_reject_reason

            sj = r.to_json()
            meta["sync"] = sj
            meta["sync_offset"], meta["sync_confidence"], meta["sync_method"] = sj["offset_frames"], sj["confidence"], r.method
            if r.method not in res.sync_methods:
                res.sync_methods.append(r.method)
            reason = sync_reject_reason(r, cfg.sync)
            tt = res.tick("sync", tt)
            if reason and cfg.enable_sync:
                reject_frames("sync", a, b, reason, (a + b) // 2, key=key, sync=sj)
                continue
        else:
            meta["sync"] = {"method": "none", "note": ctx.scorer_error}
            if "none" not in res.sync_methods:
                res.sync_methods.append("none")
        s[1] += 1
        s[3] += L
        # stage 5b: quality
        q_ = counts["quality"]
        q_[0] += 1
        q_[2] += L
        try:
            from .stages.quality import measure_quality, quality_reject_reason
        except ImportError:
            measure_quality = None
        if measure_quality is not None:
            q = measure_quality(crop.frames)
            meta["blur"] = float(q.blur)
            meta["motion"] = float(q.motion)
            reason = quality_reject_reason(q, cfg.quality)
            tt = res.tick("quality", tt)
            if reason and cfg.enable_quality:
                reject_frames("quality", a, b, reason, (a + b) // 2, key=key, blur=meta["blur"])
                continue
        else:
            meta["blur"] = _laplacian_var(crop.frames)
        q_[1] += 1
        q_[3] += L
        lab = None
        if label is not None:
            meta.update({k: v for k, v in label.items() if v is not None or k in ("subject", "fold")})
            lab = label.get("label")
        sample = ClipSample(key=key, frames=crop.frames, audio=audio, meta=meta, fps=fps,
                            sample_rate=media.sample_rate, label=lab)
        te = time.perf_counter()
        samples.append(sample.to_wds() if encode else sample)  # encode now: raw crops take much memory
        tt = res.tick("encode", te)
        row = {"key": key, "shard": None, "source": res.source, "input_id": res.input_id, "clip_index": idx,
               "start": meta["start"], "end": meta["end"], "seconds": round(L, 6), "num_frames": int(b - a),
               "sync_offset": meta.get("sync_offset"), "sync_confidence": meta.get("sync_confidence"),
               "sync_method": meta.get("sync_method", "none"), "blur": meta.get("blur"),
               "face_side": meta["face_side"]}
        if label is not None:
            row.update({k: label.get(k) for k in ("label", "label_name", "subject", "fold", "targets") if k in label})
        if thumbs is not None:
            row["thumb"] = _thumb(thumbs, f"{res.input_id}/a{idx:03d}", crop.frames[len(crop.frames) // 2])
        res.manifest.append(row)
    for stage, (i, o, si, so) in counts.items():
        res.count(stage, i, o, si, so)
    return clip_base + len(clips)


def _whole_clip(media: Media, res: InputResult, ctx: WorkerContext, thumbs: Path | None,
                label: dict[str, Any] | None, clip_base: int, samples: list[Any], encode: bool = True) -> int:
    """No curation: the whole input as one clip, centre square crop resized to out_size."""
    import cv2

    cfg = ctx.cfg
    n, h, w = media.frames.shape[:3]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    size = cfg.crop.out_size
    frames = np.stack([cv2.resize(f[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)
                       for f in media.frames])
    scale = media.source_size[0] / w
    box = [round(v * scale, 1) for v in (x0, y0, x0 + side, y0 + side)]
    key = clip_key(res.input_id, clip_base)
    start = media.start_frame / media.fps
    end = round(start + media.seconds, 6)
    start = round(start, 6)
    meta = {"source": res.source, "input_id": res.input_id, "clip_index": clip_base, "start": start,
            "end": end, "fps": media.fps, "sample_rate": media.sample_rate, "num_frames": n,
            "crop_size": size, "pipeline_version": PIPELINE_VERSION, "curated": False, "boxes": [box] * n,
            "source_fps": round(media.source_fps, 3), "source_size": list(media.source_size),
            "blur": _laplacian_var(frames)}
    if label is not None:
        meta.update(label)
    for stage in ("scene", "face", "silence", "crop", "sync", "quality"):
        res.count(stage, 1, 1, media.seconds, media.seconds)
    row = {"key": key, "shard": None, "source": res.source, "input_id": res.input_id, "clip_index": clip_base,
           "start": start, "end": end, "seconds": round(media.seconds, 6), "num_frames": n, "sync_offset": None,
           "sync_confidence": None, "sync_method": "none", "blur": meta["blur"], "face_side": None}
    if label is not None:
        row.update({k: label.get(k) for k in ("label", "label_name", "subject", "fold", "targets") if k in label})
    if thumbs is not None:
        row["thumb"] = _thumb(thumbs, f"{res.input_id}/a{clip_base:03d}", frames[n // 2])
    res.manifest.append(row)
    sample = ClipSample(key=key, frames=frames, audio=media.audio, meta=meta, fps=media.fps,
                        sample_rate=media.sample_rate, label=None if label is None else label.get("label"))
    samples.append(sample.to_wds() if encode else sample)
    return clip_base + 1


def _clean(values: list[float]) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 4) for v in values]


def _laplacian_var(frames: np.ndarray) -> float:
    import cv2

    idx = np.linspace(0, len(frames) - 1, min(5, len(frames))).astype(int)
    return round(float(np.mean([cv2.Laplacian(cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
                                 for i in idx])), 3)
