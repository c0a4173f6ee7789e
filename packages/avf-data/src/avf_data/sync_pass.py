"""``avf-data sync DIR``: enforce SyncNet sync on an existing build, in large batches.

Why a pass of its own: SyncNet is the expensive stage (a 13.6 M parameter network on every
5-frame window) and the only one that wants a GPU. A build can run everywhere on CPUs
without weights (sync measured, not enforced); this pass then scores every accepted clip
with SyncNet v2 where the weights and the GPU are, batching windows of many clips into
one forward pass, and moves failing clips to the rejects.

What SyncNet sees (see :mod:`avf_data.stages.syncnet_input`): the reference crop geometry
cut from the **source** video at source resolution, using the per-frame ``face_boxes`` the
build stored in each sample's json, and the sample's own audio (the shard's 16 kHz mono
wav, i.e. exactly what training reads). A sample without ``face_boxes`` (older builds), or
whose source file is gone, is scored on its 160 px training crop instead and its result
says so in ``sync.note`` / ``sync_input: crop``.

Crash safety and resume (``kill -9`` at any point, then the same command again):

* ``DIR/sync.jsonl`` is the pass's log. Its first line fixes the settings (weights hash,
  thresholds); a rerun with other settings is refused. Then one fsynced line per shard: its
  counts and the index and SHA-1 of the rewritten shard. Every clip's result and decision is
  in ``DIR/sync/shard-NNNNNN.json``, written (durably) before the line, so the log stays
  small: a rerun reads it in a moment even for a 1.36 M-clip corpus.
* Per shard: score its clips; write the filtered shard to ``<shard>.sync.tmp`` and fsync, and
  its verdicts; append the shard's log line (the commit point); ``os.replace`` the tmp over
  the shard and write its index. A rerun skips shards whose log line is present, finishing a replace or
  an index the crash interrupted, so a clip is never scored twice, lost or duplicated.
* The build log is never edited. The outputs are written again from both logs
  (:mod:`avf_data.store.outputs`): failing clips move from the manifest to the rejects
  (stage ``sync``, ``code`` ``sync.offset`` / ``sync.confidence`` / ``sync.unmeasurable``,
  the scores in ``sync``) and the stage counts follow, so every input second stays in a
  clip or a reject row. Memory holds one shard's decisions at a time.

Engines: ``local`` scores in this process (all cores, or the GPU); ``ray`` hands shards to
a pool of :class:`ShardScorer` actors (one per GPU with ``device: cuda``, else one-CPU
actors) that write the filtered ``.sync.tmp`` shards; the driver alone appends to the log
and renames, in completion order, so the crash story above is the same.

A shard whose clips all fail stays as an empty tar (shard numbers stay without gaps).
The folder is locked (``.avf-data.lock``, the build's lock) for the duration of the pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .engines import WorkerSpec, run_jobs
from .settings import gather, update
from .stages import registry
from .stages.sync_calibration import apply_calibration
from .store.folder import FolderLock, OutputFolder, write_atomic
from .store.log import JsonLog
from .store.outputs import write_outputs
from .store.packer import PackState
from .tars import SampleTarWriter, ShardIndex, fsync_dir, read_local_index, write_index

SYNC_LOG = "sync.jsonl"
LOG_VERSION = 1
WEIGHTS_HELP = (
    "SyncNet v2 weights are the authors' release with joonson/syncnet_python (its download_model.sh "
    "fetches data/syncnet_v2.model, about 52 MiB); give the file with --syncnet-weights, the config key "
    "sync.weights or the AVF_SYNCNET_WEIGHTS environment variable"
)


# --------------------------------------------------------------------------- source decode


def decode_source_crops(
    path: str | os.PathLike, start: float, n_frames: int, rects: np.ndarray, fps: float = 25.0, size: int = 224
) -> np.ndarray:
    """Cut ``rects[k]`` (source px, :func:`~avf_data.stages.syncnet_input.reference_rects`)
    from the source frame nearest to ``start + k / fps`` for ``k < n_frames``.

    Times are measured from the video stream's start (the build's time 0). Decoding seeks
    to the keyframe before ``start`` and streams; only chosen frames are converted to RGB
    (at source resolution) and each is cut at once, so memory holds 224 px crops only.
    Past the end of the stream the last frame is reused.
    """
    import av

    from .stages.syncnet_input import cut_padded

    out = np.empty((n_frames, size, size, 3), np.uint8)
    if n_frames == 0:
        return out
    targets = start + np.arange(n_frames) / fps
    with av.open(os.fspath(path)) as container:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        tb = float(vs.time_base)
        t0 = vs.start_time if vs.start_time is not None else 0
        if start > 1.0:
            container.seek(int(t0 + (start - 1.0) / tb), stream=vs, backward=True, any_frame=False)
        k = 0
        prev: tuple[float, Any] | None = None
        cache: dict[int, np.ndarray] = {}

        def rgb(frame) -> np.ndarray:
            key = id(frame)
            if key not in cache:
                cache.clear()
                cache[key] = frame.to_ndarray(format="rgb24")
            return cache[key]

        def cut(frame, kk: int) -> None:
            x0, y0, x1, y1 = (int(v) for v in rects[kk])
            out[kk] = cut_padded(rgb(frame), x0, y0, x1, y1, size, size)

        for i, frame in enumerate(container.decode(vs)):
            t = (frame.pts - t0) * tb if frame.pts is not None else i / fps
            while k < n_frames and targets[k] <= t:
                use_prev = prev is not None and targets[k] - prev[0] <= t - targets[k]
                cut(prev[1] if use_prev else frame, k)
                k += 1
            if k >= n_frames:
                break
            prev = (t, frame)
        if k < n_frames:
            if prev is None:
                raise ValueError(f"{path}: no video frame at or after {start:.3f} s")
            for kk in range(k, n_frames):
                cut(prev[1], kk)
    return out


# --------------------------------------------------------------------------- samples


def clip_num_frames(meta: dict[str, Any]) -> int:
    """Frames of a clip (25 fps) from its json."""
    return int(meta.get("num_frames") or round((float(meta["end"]) - float(meta["start"])) * 25.0))


def source_unusable(meta: dict[str, Any]) -> str | None:
    """Why a clip cannot be scored on the reference crop cut from its source (None: it can).
    ``avf-train syncnet`` checks its training clips with the same rule."""
    n = clip_num_frames(meta)
    boxes = meta.get("face_boxes")
    src = meta.get("source")
    if boxes is None:
        return "no face_boxes in the sample json (older build)"
    if len(boxes) != n:
        return f"{len(boxes)} face_boxes for {n} frames"
    if abs(float(meta.get("fps", 25.0)) - 25.0) > 1e-3:
        return f"clip at {float(meta['fps']):g} fps, SyncNet's geometry needs 25"
    if not src or not os.path.isfile(src):
        return f"source file missing: {src}"
    return None


def prepare_sample(sample: dict[str, Any], face_crop_scale: float, use_source: bool = True):
    """A shard sample -> (:class:`~avf_data.stages.sync.SyncInput`, input kind); ``use_source``
    False (``sync.input: crop``) scores the training crop even when the source is there."""
    from .shards import decode_audio, decode_mp4, sample_meta
    from .stages.sync import CROP_INPUT_NOTE, FALLBACK_GEOMETRY_NOTE, SyncInput
    from .stages.syncnet_input import reference_rects

    meta, audio_ext = sample_meta(sample)  # a sample without its mp4, json or audio: ValueError
    audio, sr = decode_audio(sample[audio_ext])
    n = clip_num_frames(meta)
    boxes, src = meta.get("face_boxes"), meta.get("source")
    why = source_unusable(meta) if use_source else "sync.input: crop"
    if why is None:
        try:
            crops = decode_source_crops(src, float(meta["start"]), n, reference_rects(np.asarray(boxes, np.float64)))
            return SyncInput(crops, audio, 25.0, sr, "reference"), "source"
        except Exception as exc:  # noqa: BLE001 - an unreadable source falls back, with the reason
            why = f"source not decodable ({type(exc).__name__}: {exc})"
    frames, vfps = decode_mp4(sample["mp4"])
    note = CROP_INPUT_NOTE if not use_source else f"{FALLBACK_GEOMETRY_NOTE}: {why}"
    return SyncInput(frames, audio, vfps, sr, "face_crop", note), "crop"


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _updated_json(raw: bytes, decision: dict[str, Any]) -> bytes:
    """The sample json with the pass's result (idempotent: the build's own measurement is
    kept once, as ``sync_build``)."""
    meta = json.loads(raw)
    if "sync_build" not in meta and "sync" in meta:
        meta["sync_build"] = meta["sync"]
    sj = decision["sync"]
    meta.update(
        sync=sj,
        sync_offset=sj["offset_frames"],
        sync_confidence=sj["confidence"],
        sync_method=sj["method"],
        sync_enforced=True,
        sync_input=decision["input"],
    )
    return json.dumps(meta, sort_keys=True).encode()


def write_filtered_shard(src: Path, dst: Path, decisions: dict[str, dict[str, Any]]) -> tuple[int, int, ShardIndex]:
    """Write ``src``'s samples that ``decisions`` keep (json updated) to ``dst`` and fsync it.
    Deterministic bytes (the one tar writer), so a re-apply gives the same file. Returns
    (kept, dropped, the new shard's index)."""
    from .shards import iter_raw_samples

    kept = dropped = 0
    with open(dst, "wb") as fh:
        writer = SampleTarWriter(fh)
        for sample in iter_raw_samples([str(src)]):
            key = sample["__key__"]
            d = decisions.get(key)
            if d is not None and d.get("code"):
                dropped += 1
                continue
            kept += 1
            record = {k: v for k, v in sample.items() if k != "__url__"}
            if d is not None and "json" in record:
                record["json"] = _updated_json(record["json"], d)
            writer.write(record)
        size = writer.finish()
        fh.flush()
        os.fsync(fh.fileno())
    return kept, dropped, writer.index.build(writer.position, size)


# --------------------------------------------------------------------------- log


def read_sync_log(log: JsonLog) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(header, {shard: its line's size check and offset}) — lines are small (the verdicts are
    in ``sync/``), and a line's index is read back only if a crash left a shard without it."""
    log.repair()
    header, shards = None, {}
    for offset, rec in log.iter_from(0):
        if rec.get("kind") == "header":
            header = rec
        elif rec.get("kind") == "shard":
            shards[rec["shard"]] = {"bytes": rec.get("bytes"), "line": offset}
    return header, shards


# --------------------------------------------------------------------------- the pass


@dataclass
class SyncPassReport:
    shards: int = 0
    shards_scored: int = 0
    shards_resumed: int = 0
    clips_scored: int = 0
    frames_scored: int = 0
    kept: int = 0
    rejected: int = 0
    by_code: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, int] = field(default_factory=dict)  # source / crop
    wall_seconds: float = 0.0
    scoring_seconds: float = 0.0
    frames_per_second: float = 0.0


def _settings(weights: str, sync_cfg) -> dict[str, Any]:
    return {
        "weights_sha1": _sha1_file(Path(weights)),
        "max_offset_frames": sync_cfg.max_offset_frames,
        "min_confidence_syncnet": sync_cfg.min_confidence_syncnet,
        "search_frames": sync_cfg.search_frames,
    }


@dataclass
class SyncSettings:
    """What the pass reads of a build config: its ``sync`` section, the crop margin (the face
    crop's scale) and how the report shows examples."""

    sync: Any
    face_crop_scale: float
    report_examples: int = 12
    thumbnails: bool = True


def load_sync_settings(
    folder: OutputFolder, config: str | os.PathLike | None, sets: list[str] | None = None
) -> SyncSettings:
    """:class:`SyncSettings` from ``config`` (default: the build's own config.yaml), with
    ``--set`` assignments applied; other sections are the build's business."""
    from .stages.crop import CropConfig
    from .stages.sync import SyncConfig

    path: str | os.PathLike | None = config
    if path is None and folder.config.exists():
        path = folder.config
    try:
        data = gather(path, sets)
    except ValueError as exc:
        if config is not None:
            raise
        print(f"avf-data: warning: {path} not readable ({exc}); using defaults", file=sys.stderr)
        data = gather(None, sets)
    crop = update(CropConfig(), {"margin": (data.get("crop") or {}).get("margin", CropConfig().margin)}, "crop.")
    output = data.get("output") or {}
    return SyncSettings(
        sync=update(SyncConfig(), data.get("sync") or {}, prefix="sync."),
        face_crop_scale=float(crop.margin),
        report_examples=int(output.get("report_examples", 12)),
        thumbnails=bool(output.get("thumbnails", True)),
    )


def finished_build(folder: OutputFolder) -> int:
    """The number of shards of the finished build in ``folder``; a usage error when there is
    no build, or one that stopped half-way (its last shard is not sealed yet)."""
    log = JsonLog(folder.build_log)
    try:
        state = PackState.from_json(json.loads(folder.state.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        state = None
    if state is None or state.log_bytes != log.size() or state.open_samples or state.backlog:
        raise ValueError(
            f"the build in {folder.root} did not finish (its last shard is not sealed); run the same "
            "`avf-data build` command again to finish it, then `avf-data sync`"
        )
    return state.next_shard


def run_sync_pass(
    out_dir: str | os.PathLike,
    weights: str | None = None,
    *,
    config: str | os.PathLike | None = None,
    sets: list[str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    clip_frames: int = 1500,
    engine: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    after_shard: Any = None,
) -> dict[str, Any]:
    """Score every shard of the finished build in ``out_dir`` with SyncNet and enforce sync.

    ``config``: a YAML whose ``sync`` section sets thresholds / device / batch size (default:
    the build's own ``config.yaml``). ``clip_frames``: frames of reference crops held in
    memory per scoring batch (224 px: ~150 kB each). ``engine``: ``local`` (this process,
    all cores or the GPU) or ``ray`` (a pool of scorer actors: one per GPU with ``--device
    cuda``, else ``workers`` one-CPU actors; ``ray_address`` joins a cluster, whose nodes
    must see ``out_dir`` and the sources). ``after_shard(rel)``: test hook, called after each
    shard is committed. Returns the regenerated stats dict (with ``sync_pass``).
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    folder = OutputFolder(out_dir)
    if not folder.build_log.is_file():
        raise ValueError(f"{folder.root} is not an avf-data build (no build.jsonl); run `avf-data build` first")
    settings = load_sync_settings(folder, config, sets)
    sync_cfg = _with_overrides(settings.sync, device, batch_size, engine)
    path = _weights_path(weights, sync_cfg)
    sync_cfg = apply_calibration(sync_cfg, path)[0]  # a sync expert's sidecar rule (sync.calibration)
    return _score_shards(
        folder, settings, sync_cfg, path, clip_frames, engine, workers, ray_address, progress, after_shard
    )


def _score_shards(
    folder: OutputFolder,
    settings: Any,
    sync_cfg: Any,
    path: str,
    clip_frames: int,
    engine: str,
    workers: int | None,
    ray_address: str | None,
    progress: bool,
    after_shard: Any,
) -> dict[str, Any]:
    """The pass itself, under the folder's lock: resume from the log, score the rest, write outputs."""
    from tqdm import tqdm

    t_start = time.perf_counter()
    rep = SyncPassReport()
    with FolderLock(folder):
        n_shards = finished_build(folder)
        log, header, logged = _open_log(folder, path, sync_cfg)
        rep.shards = n_shards
        bar = tqdm(total=n_shards, unit="shard", desc="sync", file=sys.stderr, disable=not progress, dynamic_ncols=True)

        def shard_done(rel: str) -> None:
            if after_shard is not None:
                after_shard(rel)
            bar.update(1)

        todo = _shards_to_score(folder, n_shards, logged, log, rep, shard_done)
        # SyncNet is loaded only when there is work (torch alone is ~0.5 GB), and checked before
        # the log's first line: a weights file that does not load fails here, leaving nothing behind
        results: Any = iter(())
        if todo:
            from .stages.sync import build_sync_scorer

            build_sync_scorer(dataclasses.replace(sync_cfg, device="cpu"), path)
            spec = _scorer_spec(path, sync_cfg, settings, clip_frames, engine, workers)
            results = run_jobs(todo, spec, workers or 0, engine, ray_address, give_up=_shard_failed)
        if header is None:
            log.append({"kind": "header", "version": LOG_VERSION, **_settings(path, sync_cfg)})
        for rel, res in results:
            _commit_shard(folder, log, rel, res, rep)
            shard_done(rel)
        bar.close()
        log.close()
        _count_verdicts(log, rep)
        rep.wall_seconds = round(time.perf_counter() - t_start, 3)
        stats = _write_outputs(folder, settings, sync_cfg, path, engine, rep, progress)
    return stats


def _shard_failed(job: tuple[str, str, str], reason: str) -> Any:
    """A shard whose scoring failed for good (on Ray after a retry; in the local pool after
    three worker crashes): the pass stops in one line naming it; finished shards are kept."""
    raise ValueError(f"scoring shard {job[0]} {reason}; finished shards are kept (rerun to resume)")


def _shards_to_score(
    folder: OutputFolder, n_shards: int, logged: dict[str, Any], log: JsonLog, rep: SyncPassReport, shard_done: Any
) -> list[tuple[str, str, str]]:
    """(shard, path, temporary path) of every shard without a logged verdict; a logged one is
    made sure to be applied (a crash may have come between the log line and the rename)."""
    todo = []
    for rel in (folder.shard_name(n) for n in range(n_shards)):
        shard = folder.root / rel
        tmp = shard.with_name(shard.name + ".sync.tmp")
        if rel in logged:
            _ensure_applied(shard, tmp, logged[rel], log)
            rep.shards_resumed += 1
            shard_done(rel)
        else:
            tmp.unlink(missing_ok=True)
            todo.append((rel, str(shard), str(tmp)))
    return todo


def _with_overrides(sync_cfg, device: str | None, batch_size: int | None, engine: str):
    """The sync section with ``--device`` and ``--batch-size`` applied (and checked)."""
    if device is not None:
        sync_cfg = dataclasses.replace(sync_cfg, device=device)
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        sync_cfg = dataclasses.replace(sync_cfg, batch_size=batch_size)
    if sync_cfg.device.startswith("cuda") and engine == "local":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {sync_cfg.device}: CUDA is not available on this machine")
    return sync_cfg


def _weights_path(weights: str | None, sync_cfg) -> str:
    from .stages.sync import resolve_weights

    path, _source = resolve_weights(weights, sync_cfg)
    if path is None:
        raise ValueError(f"the sync pass needs SyncNet weights. {WEIGHTS_HELP}")
    if not os.path.isfile(path):
        raise ValueError(f"SyncNet weights: no such file {path!r}. {WEIGHTS_HELP}")
    return path


def _open_log(folder: OutputFolder, path: str, sync_cfg) -> tuple[JsonLog, dict[str, Any] | None, dict[str, Any]]:
    """The pass's log, its header and its scored shards; refuses other settings than the log's."""
    settings = _settings(path, sync_cfg)
    log = JsonLog(folder.sync_log)
    header, logged = read_sync_log(log)
    if header is not None and {k: header.get(k) for k in settings} != settings:
        diff = ", ".join(f"{k}: {header.get(k)} -> {v}" for k, v in settings.items() if header.get(k) != v)
        raise ValueError(
            f"{folder.root} was sync-checked with other settings ({diff}); clips rejected then are "
            "no longer in the shards, so a different pass needs a fresh build"
        )
    return log, header, logged


def _commit_shard(folder: OutputFolder, log: JsonLog, rel: str, res: dict[str, Any], rep: SyncPassReport) -> None:
    """Save a scored shard's verdicts, log it (the commit point), then put its filtered
    version in place."""
    shard = folder.root / rel
    folder.sync_decisions.mkdir(exist_ok=True)
    write_atomic(folder.decisions(rel), json.dumps(res["clips"], separators=(",", ":")), durable=True)
    counts: dict[str, dict[str, int]] = {"codes": {}, "inputs": {}}
    for d in res["clips"].values():
        if d.get("code"):
            counts["codes"][d["code"]] = counts["codes"].get(d["code"], 0) + 1
        counts["inputs"][d["input"]] = counts["inputs"].get(d["input"], 0) + 1
    line = {
        "kind": "shard",
        "shard": rel,
        "kept": res["kept"],
        "rejected": res["rejected"],
        **counts,
        "sha1": res["sha1"],
        "bytes": res["bytes"],
        "index": res["index"],
    }
    log.append(line)
    _ensure_applied(shard, shard.with_name(shard.name + ".sync.tmp"), line)
    rep.shards_scored += 1
    rep.clips_scored += len(res["clips"])
    rep.frames_scored += res["frames"]
    rep.scoring_seconds += res["seconds"]


def _count_verdicts(log: JsonLog, rep: SyncPassReport) -> None:
    """Kept and rejected clips over every logged shard (from the lines' counts)."""
    for _, line in log.iter_from(0):
        if line.get("kind") != "shard":
            continue
        rep.kept += int(line.get("kept", 0))
        rep.rejected += int(line.get("rejected", 0))
        for key, total in (("codes", rep.by_code), ("inputs", rep.inputs)):
            for name, n in (line.get(key) or {}).items():
                total[name] = total.get(name, 0) + int(n)


def _write_outputs(folder: OutputFolder, settings: SyncSettings, sync_cfg, path: str, engine: str, rep, progress):
    from .stages.sync import METHOD_SYNCNET

    rep.scoring_seconds = round(rep.scoring_seconds, 3)
    rep.frames_per_second = round(rep.frames_scored / rep.scoring_seconds, 2) if rep.scoring_seconds else 0.0
    summary = {
        **asdict(rep),
        "scorer": METHOD_SYNCNET,
        "weights": os.path.abspath(path),
        "device": sync_cfg.device,
        "engine": engine,
        "precision": sync_cfg.precision,
        "batch_size": sync_cfg.batch_size,
        "max_offset_frames": sync_cfg.max_offset_frames,
        "min_confidence_syncnet": sync_cfg.min_confidence_syncnet,
        "expert": apply_calibration(sync_cfg, path)[1],
    }
    old = _read_json(folder.stats)
    return write_outputs(
        folder,
        old.get("run", {}),
        extra={"pipeline_version": old.get("pipeline_version"), "sync_pass": summary, "sync_expert": summary["expert"]},
        report_examples=settings.report_examples,
        thumbnails=settings.thumbnails,
        progress=progress,
        stage_order=["decode", *registry.names()],
    )


class ShardScorer:
    """Scores whole shards into filtered ``.sync.tmp`` shards: one per process (local engine)
    or per Ray actor (one GPU each, or one CPU). Builds its SyncNet scorer once."""

    def __init__(
        self,
        weights: str,
        sync_cfg: dict[str, Any],
        face_crop_scale: float,
        clip_frames: int,
        threads: int | None = None,
    ) -> None:
        from .stages.sync import SyncConfig, build_sync_scorer

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.cfg = SyncConfig(**sync_cfg)
        self.scorer = build_sync_scorer(self.cfg, weights)
        self.face_crop_scale = face_crop_scale
        self.clip_frames = clip_frames

    def __call__(self, job: tuple[str, str, str]) -> tuple[str, dict[str, Any]]:
        """One shard job ``(name, path, tmp path)`` -> ``(name, result)``."""
        rel, shard, tmp = job
        return rel, self.score(shard, tmp)

    def score(self, shard: str, tmp: str) -> dict[str, Any]:
        """Score every sample of ``shard``, write the kept ones to ``tmp`` (fsynced); returns
        ``{"clips": {key: {"sync", "code", "reason", "input"}}, "kept", "rejected", "sha1",
        "bytes", "frames", "seconds"}``."""
        from .shards import iter_raw_samples
        from .stages.sync import sync_reject_code, sync_reject_reason

        t0 = time.perf_counter()
        decisions: dict[str, dict[str, Any]] = {}
        batch: list[tuple[str, Any, str]] = []
        frames = 0
        total_frames = 0

        def flush() -> None:
            nonlocal frames, total_frames
            if not batch:
                return
            results = self.scorer.score_many([inp for _, inp, _ in batch])
            for (key, inp, kind), r in zip(batch, results, strict=True):
                code = sync_reject_code(r, self.cfg)
                decisions[key] = {
                    "sync": r.to_json(),
                    "code": code,
                    "reason": sync_reject_reason(r, self.cfg) if code else None,
                    "input": kind,
                }
                total_frames += len(inp.frames)
            batch.clear()
            frames = 0

        for sample in iter_raw_samples([shard]):  # a link or device member: ShardReadError, one line
            try:
                inp, kind = prepare_sample(sample, self.face_crop_scale, self.cfg.input != "crop")
            except ValueError as exc:
                raise ValueError(f"shard {shard}: {exc}; the sync pass reads shards `avf-data build` wrote") from None
            batch.append((sample["__key__"], inp, kind))
            frames += len(inp.frames)
            if frames >= self.clip_frames:
                flush()
        flush()
        kept, dropped, index = write_filtered_shard(Path(shard), Path(tmp), decisions)
        return {
            "clips": decisions,
            "kept": kept,
            "rejected": dropped,
            "sha1": _sha1_file(Path(tmp)),
            "bytes": os.path.getsize(tmp),
            "index": index.to_json(),
            "frames": total_frames,
            "seconds": time.perf_counter() - t0,
        }


def _scorer_spec(path: str, sync_cfg, settings: SyncSettings, clip_frames: int, engine: str, workers: int | None):
    """Where shards are scored: this process (the local engine's default: all cores or the
    GPU), ``workers`` one-thread processes, or Ray actors (one per GPU with ``--device cuda``,
    each seeing its GPU as ``cuda:0``; else one-CPU actors)."""
    gpu = engine == "ray" and sync_cfg.device.startswith("cuda")
    cfg = asdict(dataclasses.replace(sync_cfg, device="cuda") if gpu else sync_cfg)
    threads = None if (engine == "local" and not workers) or gpu else 1
    return WorkerSpec(
        ShardScorer, (path, cfg, settings.face_crop_scale, clip_frames, threads), num_gpus=1 if gpu else 0
    )


def _ensure_applied(shard: Path, tmp: Path, line: dict[str, Any], log: JsonLog | None = None) -> None:
    """Finish what a logged shard may still lack after a crash: the rename of its filtered
    ``.sync.tmp`` over the shard, and the shard's index (written after the rename; read back
    from the log line at ``line["line"]`` when the line at hand does not carry it)."""
    if tmp.exists():
        if tmp.stat().st_size != line["bytes"]:
            raise ValueError(
                f"{tmp}: {tmp.stat().st_size} bytes, sync.jsonl says {line['bytes']}; was it changed by hand?"
            )
        os.replace(tmp, shard)
        fsync_dir(shard.parent)
    if read_local_index(shard) is None:
        index = line.get("index")
        if index is None and log is not None and "line" in line:
            index = log.read_at(line["line"]).get("index")
        if index:
            write_index(shard, ShardIndex.from_json(index))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
