"""Curation of input files: stream-decode, run the stages, write shards atomically.

:func:`process_task` is what a worker (process pool or Ray actor) runs for ``avf-data build``:
a task is a group of inputs whose clips go into one segment, ``segments/<task>.tar``, which
the driver later packs into sized shards (:mod:`avf_data.store.packer`). It returns a plain,
JSON-serialisable dict (per input: manifest rows, reject rows, per-stage counts; the segment's
sample offsets) that the driver commits to the build log.
:func:`process_input` curates one input on its own, :func:`curate_video` in memory.

An input is decoded once, in chunks (:mod:`avf_data.chunks`), and each chunk goes through the
stage loop (:func:`avf_data.stages.base.run_stages`). Seconds are accounted in whole frames
at the output rate, so for every source ``sum(accepted) + sum(rejected) == input seconds``
exactly; the input's length is its container duration (an undecodable tail is a
``decode.truncated`` row, an input that cannot be decoded at all one row spanning it).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import PIPELINE_VERSION, BuildConfig
from .inputs import input_id
from .media import MediaError, MediaReader, path_text, probe_seconds
from .rows import ManifestRow, RejectRow
from .shards import ClipSample
from .stages import registry
from .stages.base import Span, Stage, run_stages
from .store.examples import reject_row_id, unit_hash, wants_thumb
from .store.folder import OutputFolder
from .tars import SampleTarWriter

_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def clip_key(iid: str, index: int) -> str:
    return f"{iid}_{index:04d}"


# --------------------------------------------------------------------------- per-process context


@dataclass
class WorkerContext:
    """What a worker builds once and reuses for every input: its stage units (the sync
    stage's scorer among them) and the fields they add to every input's record."""

    cfg: BuildConfig
    stages: list[Stage]
    record: dict[str, Any]


_CTX: dict[str, WorkerContext] = {}


def cpu_now() -> float:
    """CPU seconds (user + system) this process has used, all its threads included."""
    t = os.times()
    return t.user + t.system


def limit_threads() -> None:
    """One worker = one core: keep OpenCV / ONNX / torch from spawning thread pools."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("AVF_ONNX_THREADS", "1")
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover
        pass
    import sys

    if "torch" in sys.modules:  # only SyncNet needs torch; importing it costs ~300 MB per worker
        sys.modules["torch"].set_num_threads(1)


def preload_modules() -> None:
    """Import the heavy libraries and load every stage's models once: the local engine's fork
    server and each Ray actor call this before their first task, so workers never pay for it."""
    import importlib

    for name in ("cv2", "av", "soundfile", "scenedetect", "dlib", "onnxruntime", "avf_data.chunks"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    registry.preload()


def get_context(cfg: BuildConfig, weights: str | None) -> WorkerContext:
    """The per-process context, built on first use (so once per worker process)."""
    key = f"{cfg.to_dict()!r}:{weights}"
    ctx = _CTX.get(key)
    if ctx is None:
        limit_threads()
        stages = registry.build(cfg.sections, weights, curate=cfg.curate)
        record: dict[str, Any] = {}
        for stage in stages:
            record.update(stage.record())
        ctx = WorkerContext(cfg=cfg, stages=stages, record=record)
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
    source_fps: float | None = None
    source_vfr: bool | None = None
    source_size: list[int] | None = None
    proc_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0  # of the worker process so far (benchmarks, memory goals)
    timing: dict[str, float] = field(default_factory=dict)  # CPU seconds spent per stage
    stage_fields: dict[str, Any] = field(default_factory=dict)  # what the stages add (the sync scorer)

    def add_time(self, stage: str, seconds: float) -> None:
        self.timing[stage] = round(self.timing.get(stage, 0.0) + seconds, 4)

    def count(self, stage: str, n_in: int, n_out: int, s_in: float, s_out: float) -> None:
        d = self.stages.setdefault(stage, {"in": 0, "out": 0, "seconds_in": 0.0, "seconds_out": 0.0})
        d["in"] += n_in
        d["out"] += n_out
        d["seconds_in"] = round(d["seconds_in"] + s_in, 6)
        d["seconds_out"] = round(d["seconds_out"] + s_out, 6)

    def reject(self, stage: str, start: float, end: float, code: str, reason: str, **extra: Any) -> dict[str, Any]:
        row = RejectRow(self.source, self.input_id, start, end, stage, code, reason, extra).to_dict()
        self.rejects.append(row)
        return row

    def to_dict(self) -> dict[str, Any]:
        rec = dataclasses.asdict(self)
        return {**rec, **rec.pop("stage_fields")}


class Thumbs:
    """Pictures of reject rows for the report, made only for rows whose hash can still bring
    them into its bounded sample (``policy`` from the driver, :mod:`avf_data.store.examples`),
    and at most ``policy["cap"]`` per task."""

    def __init__(self, out: Path | None, policy: dict[str, Any] | None) -> None:
        self.folder = OutputFolder(out) if out is not None and policy is not None else None
        self.policy = policy
        self.made = 0

    def offer(self, row: dict[str, Any], image: np.ndarray, size: int = 96) -> None:
        if self.folder is None or self.made >= int(self.policy.get("cap", 24)):
            return
        name = reject_row_id(row)
        if not wants_thumb(self.policy, unit_hash(name), row.get("code")):
            return
        import cv2

        h, w = image.shape[:2]
        s = size / max(h, w)
        small = cv2.resize(image, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            self.folder.thumbs.mkdir(parents=True, exist_ok=True)
            self.folder.thumb(name).write_bytes(buf.tobytes())
            self.made += 1


def _frames_of(seconds: float, fps: float) -> int:
    return int(np.floor(seconds * fps + 1e-6))


# --------------------------------------------------------------------------- the pipeline


def curate_input(
    path: str,
    cfg: BuildConfig,
    weights: str | None,
    label: dict[str, Any] | None,
    iid: str,
    encode: bool,
    thumbs: Thumbs | None = None,
) -> tuple[InputResult, list[Any], float]:
    """Decode one input and run the stages on it. Returns its (unfinished) result, the
    accepted samples (encoded ``{ext: bytes}`` dicts, or ClipSample when ``encode`` is false)
    in manifest order, and the start time. Never raises for a bad input: problems become rows."""
    t0, c0 = time.perf_counter(), time.process_time()
    ctx = get_context(cfg, weights)
    res = InputResult(input_id=iid, source=path_text(path), stage_fields=dict(ctx.record))
    samples: list[Any] = []  # encoded (mp4/wav bytes): small, unlike raw crops
    try:
        with MediaReader(path, cfg.media) as reader:
            res.source_fps = round(reader.info.fps, 3)
            clip_index = 0
            for chunk in _chunks(reader, cfg, res):
                clip_index = _curate(chunk, res, ctx, thumbs, label, clip_index, samples, encode)
            _account_tail(reader, cfg.media, res)
    except MediaError as exc:
        return _rejected_whole(path, res, cfg.media.fps, exc.code, str(exc)), [], t0
    except OSError as exc:
        if exc.errno in _OUTPUT_ERRNOS:  # our disk, not the input: stop the run, a rerun resumes
            raise
        return _internal_error(path, res, cfg, exc), [], t0
    except Exception as exc:  # a bug or an unexpected library error: the input is rejected, the run goes on
        return _internal_error(path, res, cfg, exc), [], t0
    res.cpu_seconds = round(time.process_time() - c0, 4)
    return res, samples, t0


def _chunks(reader: MediaReader, cfg: BuildConfig, res: InputResult):
    """The input's chunks, their decoding timed and their frames counted."""
    from .chunks import iter_chunks

    chunks = iter_chunks(reader, _chunk_plan(cfg))
    while True:
        td = time.process_time()
        chunk = next(chunks, None)
        res.add_time("decode", time.process_time() - td)
        if chunk is None:
            return
        res.frames += chunk.num_frames
        res.seconds = round(res.frames / cfg.media.fps, 6)
        yield chunk


def _account_tail(reader: MediaReader, media, res: InputResult) -> None:
    """Count the decoded seconds; an undecodable tail the container promises is a reject row."""
    fps = media.fps
    info, clock = reader.info, reader.clock
    res.source_vfr = clock.vfr
    res.source_size = [info.width, info.height]
    decoded = res.seconds
    res.count("decode", 1, 1, decoded, decoded)
    tail = _frames_of(info.duration, fps) - res.frames
    if tail > 0 and (clock.truncated_error is not None or tail >= _frames_of(media.truncated_seconds, fps) > 0):
        end = round((res.frames + tail) / fps, 6)
        why = f": {clock.truncated_error}" if clock.truncated_error else ""
        reason = f"truncated: the container promises {info.duration:.2f} s, {decoded:.2f} s decode{why}"
        res.reject("decode", decoded, end, "decode.truncated", reason)
        res.count("decode", 0, 0, end - decoded, 0.0)
        res.seconds = end


def _rejected_whole(path: str, res: InputResult, fps: float, code: str, reason: str, **extra: Any) -> InputResult:
    """The input rejected as a whole: one row spanning its container duration."""
    res.manifest.clear()
    res.rejects.clear()
    res.stages.clear()
    dur = max(res.seconds, round(_frames_of(probe_seconds(path), fps) / fps, 6))
    res.seconds, res.frames = dur, 0
    res.count("decode", 1, 0, dur, 0.0)
    res.reject("decode" if code.startswith("decode.") else "error", 0.0, dur, code, reason, **extra)
    return res


def _internal_error(path: str, res: InputResult, cfg: BuildConfig, exc: BaseException) -> InputResult:
    reason = f"internal error: {type(exc).__name__}: {exc}"
    return _rejected_whole(path, res, cfg.media.fps, "error.internal", reason, traceback=traceback.format_exc(limit=4))


def _chunk_plan(cfg: BuildConfig):
    from .chunks import ChunkPlan

    c = cfg.crop
    chunk_frames = (
        max(1, int(round(cfg.media.chunk_seconds * cfg.media.fps)))
        if cfg.media.chunk_seconds > 0
        else int(cfg.media.max_seconds * cfg.media.fps) + 1
    )
    return ChunkPlan(
        chunk_frames=chunk_frames,
        detect_every=c.detect_every,
        analysis_side=cfg.face.detect_width,
        detect_width=c.detect_width,
        score_threshold=c.score_threshold,
        region_size=c.region_size,
        region_factor=c.region_factor,
        detect=cfg.curate and c.mode != "off",
    )


def _curate(
    chunk,
    res: InputResult,
    ctx: WorkerContext,
    thumbs: Thumbs | None,
    label: dict[str, Any] | None,
    clip_base: int,
    samples: list[Any],
    encode: bool = True,
) -> int:
    """The stages on one chunk of an input; appends encoded samples; returns the next clip
    index. Frame indices are chunk-relative; rows get absolute seconds."""
    fps = chunk.fps
    f0 = chunk.start_frame

    def sec(f: int) -> float:
        return (f + f0) / fps

    def reject(stage: str, a: int, b: int, code: str, detail: str, row: dict[str, Any]) -> None:
        reject_row = res.reject(stage, sec(a), sec(b), code, detail, **row)
        if thumbs is not None:
            thumbs.offer(reject_row, chunk.small[(a + b) // 2])

    def count(stage: str, n_in: int, n_out: int, fr_in: int, fr_out: int, cpu: float) -> None:
        res.count(stage, n_in, n_out, fr_in / fps, fr_out / fps)
        res.add_time(stage, cpu)

    spans = run_stages(ctx.stages, [Span(0, chunk.num_frames)], chunk, reject, count)
    te = time.process_time()
    for idx, span in enumerate(spans, start=clip_base):
        _accept(span, idx, chunk, res, ctx, label, samples, encode)
    res.add_time("encode", time.process_time() - te)
    return clip_base + len(spans)


def _accept(
    span,
    idx: int,
    chunk,
    res: InputResult,
    ctx: WorkerContext,
    label: dict[str, Any] | None,
    samples: list[Any],
    encode: bool,
) -> None:
    """A span that survived every stage becomes a sample and a manifest row."""
    cfg = ctx.cfg
    fps = chunk.fps
    key = clip_key(res.input_id, idx)
    a, b = span.start, span.end
    start, end = round((a + chunk.start_frame) / fps, 6), round((b + chunk.start_frame) / fps, 6)
    crop = span.data["crop"]
    meta: dict[str, Any] = {
        "source": res.source,
        "input_id": res.input_id,
        "clip_index": idx,
        "start": start,
        "end": end,
        "fps": fps,
        "sample_rate": chunk.sample_rate,
        "num_frames": int(b - a),
        "crop_size": int(crop.shape[1]),
        "pipeline_version": PIPELINE_VERSION,
        "curated": bool(cfg.curate),
        "source_fps": round(chunk.source.fps, 3),
        "source_vfr": bool(chunk.source_vfr),
        "source_size": [chunk.source.width, chunk.source.height],
        "sync_method": "none",  # the sync stage's meta replaces these when it ran
        "sync_enforced": False,
        **span.meta,
    }
    lab = None
    if label is not None:
        meta.update({k: v for k, v in label.items() if v is not None or k in ("subject", "fold")})
        lab = label.get("label")
    sample = ClipSample(
        key=key,
        frames=crop,
        audio=chunk.audio_slice(a, b),
        meta=meta,
        fps=fps,
        sample_rate=chunk.sample_rate,
        label=lab,
    )
    samples.append(sample.to_wds() if encode else sample)  # encode now: raw crops take much memory
    res.manifest.append(ManifestRow.from_meta({**meta, "key": key}, label).to_dict())


Item = tuple[str, dict[str, Any] | None]  # (path, label or None)


@dataclass
class Task:
    """Consecutive pending inputs curated together; ``seq`` is the position of the first one in
    the run (the order the store packs segments in); ``thumbs`` says which reject rows get a
    picture (the driver's policy when the task was handed out)."""

    task_id: str
    seq: int
    items: list[Item]
    thumbs: dict[str, Any] | None = None


class CurationWorker:
    """One worker process of a build (:mod:`avf_data.engines`): the libraries, detectors and
    stages loaded once when it starts (a Ray actor does it itself; the local pool's workers
    fork from a server that did), then one task per call."""

    def __init__(self, cfg_dict: dict[str, Any], out_dir: str | None, weights: str | None) -> None:
        preload_modules()
        self.cfg = BuildConfig.from_dict(cfg_dict)
        self.out_dir, self.weights = out_dir, weights
        get_context(self.cfg, weights)

    def __call__(self, task: Task) -> dict[str, Any]:
        result = process_task(
            task.items, self.out_dir, self.cfg, self.weights, tid=task.task_id, seq=task.seq, thumbs=task.thumbs
        )
        result["worker"] = worker_cpu()
        return result


def worker_cpu() -> dict[str, Any]:
    """This process's CPU so far, and the start-up its fork server spent for it (once per
    server), so the driver can report the CPU of every process of a build."""
    import sys

    pre = sys.modules.get("avf_data._preload")
    preload = None
    if pre is not None and pre.PRELOAD_PID != os.getpid():
        preload = [pre.PRELOAD_PID, round(pre.PRELOAD_CPU, 3)]
    return {"pid": os.getpid(), "cpu": round(cpu_now(), 3), "preload": preload}


def task_id(input_ids: list[str]) -> str:
    """Stable id of a task (a group of inputs): a hash of its sorted input ids; its clips go to
    ``segments/<task id>.tar``."""
    return hashlib.sha1("\n".join(sorted(input_ids)).encode("ascii")).hexdigest()[:16]


def process_task(
    items: list[tuple[str, dict[str, Any] | None]],
    out_dir: str | os.PathLike | None,
    cfg: BuildConfig,
    weights: str | None = None,
    tid: str | None = None,
    before_input: Any = None,
    *,
    seq: int | None = None,
    thumbs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Curate a task (several inputs) into one segment; return its result for the build log.

    The clips of every input, in input order, go into ``segments/<tid>.tar`` (rewritten from
    scratch if an earlier try of the same task left one). Returns ``{"task_id", "seq", "n",
    "segment", "inputs"}``: ``segment`` has the sample offsets the packer needs (None when no
    clip was kept), ``inputs`` one result per input; ``seq`` (the position of the task's first
    input in the run) is passed through. ``out_dir=None`` runs the stages without writing
    anything (benchmarks). ``thumbs``: which reject rows get a picture (the driver's policy).
    ``before_input(path)`` is called before each input (a hook for tests of the engines).
    """
    iids = [input_id(p) for p, _ in items]
    tid = tid or task_id(iids)
    out = Path(out_dir) if out_dir is not None else None
    pictures = Thumbs(out, thumbs if cfg.output.thumbnails else None)
    records: list[dict[str, Any]] = []
    if out is None:
        for (path, label), iid in zip(items, iids, strict=True):
            if before_input is not None:
                before_input(path)
            res, _, t0 = curate_input(path, cfg, weights, label, iid, True)
            records.append(_finish(res, t0))
        return {"task_id": tid, "seq": seq, "n": len(items), "segment": None, "inputs": records}
    path_seg = OutputFolder(out).segment(tid)
    path_seg.parent.mkdir(parents=True, exist_ok=True)
    members: set[tuple[str, ...]] = set()
    with open(path_seg, "wb") as fh:
        writer = SampleTarWriter(fh)
        for (path, label), iid in zip(items, iids, strict=True):
            if before_input is not None:
                before_input(path)
            res, samples, t0 = curate_input(path, cfg, weights, label, iid, True, pictures)
            tw = time.process_time()
            for sample in samples:
                writer.write(sample)
                members.add(tuple(sorted(k for k in sample if not k.startswith("__"))))
            res.add_time("write", time.process_time() - tw)
            del samples
            records.append(_finish(res, t0))
        size = writer.finish()
        fh.flush()
        os.fsync(fh.fileno())
    segment = _segment_entry(out, path_seg, writer, size, members, tid)
    return {"task_id": tid, "seq": seq, "n": len(items), "segment": segment, "inputs": records}


def _segment_entry(
    out: Path, path_seg: Path, writer: SampleTarWriter, size: int, members: set[tuple[str, ...]], tid: str
) -> dict[str, Any] | None:
    """What the packer needs of a written segment (sample offsets, sizes, members); None, and no
    file, when the task kept no clip."""
    if len(members) > 1:  # one task writes one kind of sample; the shard index counts members by it
        raise ValueError(f"task {tid}: samples with different members {sorted(members)}")
    n = len(writer.index.offsets)
    if not n:
        path_seg.unlink(missing_ok=True)
        return None
    return {
        "name": path_seg.relative_to(out).as_posix(),
        "samples": n,
        "offsets": writer.index.offsets,
        "data_bytes": writer.position,
        "bytes": size,
        "members": list(next(iter(members))),
    }


def process_input(
    path: str,
    cfg: BuildConfig,
    weights: str | None = None,
    label: dict[str, Any] | None = None,
    keep_samples: list[ClipSample] | None = None,
) -> dict[str, Any]:
    """Curate one input without writing anything: its result (rows, counts); with
    ``keep_samples`` (a list) the accepted clips are appended to it unencoded. Never raises
    for a bad input."""
    encode = keep_samples is None
    res, samples, t0 = curate_input(path, cfg, weights, label, input_id(path), encode)
    if keep_samples is not None:
        keep_samples.extend(samples)
    return _finish(res, t0)


def curate_video(
    path: str | os.PathLike, cfg: BuildConfig | None = None, weights: str | None = None
) -> tuple[list[ClipSample], list[dict[str, Any]]]:
    """In-memory curation of one video (no files written): accepted clips as ClipSample
    (frames, audio, meta with start/end) in time order, and the reject rows."""
    cfg = cfg or BuildConfig()
    if cfg.output.thumbnails:
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, thumbnails=False))
    clips: list[ClipSample] = []
    res = process_input(os.fspath(path), cfg, weights, keep_samples=clips)
    return sorted(clips, key=lambda c: c.meta.get("start", 0.0)), res["rejects"]


def rejected_input(path: str, cfg: BuildConfig, code: str, reason: str) -> dict[str, Any]:
    """The result of an input rejected whole without curating it (a file that fails the cheap
    checks, a worker that keeps crashing on it): one row spanning its container duration."""
    fps = cfg.media.fps
    res = InputResult(input_id=input_id(path), source=path_text(path))
    res.seconds = round(_frames_of(probe_seconds(path), fps) / fps, 6)
    res.count("decode", 1, 0, res.seconds, 0.0)
    res.reject("decode" if code.startswith("decode.") else "error", 0.0, res.seconds, code, reason)
    return res.to_dict()


def _finish(res: InputResult, t0: float) -> dict[str, Any]:
    import resource

    res.proc_seconds = round(time.perf_counter() - t0, 4)
    res.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    return res.to_dict()
