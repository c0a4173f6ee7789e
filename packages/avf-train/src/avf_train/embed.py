"""Clips in, embeddings out: ``avf-train embed`` and the one-line loader of what it writes.

Why a command: features for probing, retrieval or clustering are only comparable with the
model's predictions when they come from exactly the inputs it is tested on. Shards therefore go
through ``ClipStream(train=False)`` as in ``avf-train predict``; a video file is decoded as
avf-data decodes its sources (``avf_data.media.load_media``: 25 fps, 16 kHz mono, the shard
format) and cut by ``transforms.make_view``, the functions the stream's test views run (frame
sampling, short-side crops, ImageNet normalisation, Kaldi fbank). Every test view of a clip
(segments x crops) goes through ``AVFMAEFinetune.embed`` and the views are averaged, per modality,
into one vector per clip.

Output: ``OUT/embeddings-NNNNNN.npz`` per input (shard or video, N = its place in the sorted
input list) holding ``keys``, ``fused`` (what the head sees), ``video``/``audio`` (pre-fusion, per
modality the model has), ``label`` (the shards' own label index, -1 = none) when a clip is
labelled, ``targets`` when every clip has DEA targets, and what it was made with (``source``,
``checkpoint``, ``precision``, ``views``). Each file is written under a ``.tmp`` name and renamed,
so a rerun skips finished inputs (and refuses files made otherwise);
``OUT/embeddings.json`` lists the files, dimensions and views. ``np.load(file)`` reads one file,
``load_embeddings(OUT)`` all of them concatenated.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avf_data.settings import ConfigError

from . import distributed as D
from .config import loader_workers
from .data import ClipStream, make_loader, resolve_shards
from .errors import DataError, StageError, one_line
from .modeling import Predictor, load_predictor
from .transforms import make_view

INDEX = "embeddings.json"
VIEWS_NOTE = "one vector per clip and modality: the mean over the clip's segments x crops test views"


@dataclass(frozen=True)
class Embedder:
    """A loaded checkpoint run as ``embed``: per-view vectors of a batch, float32 on the CPU."""

    predictor: Predictor
    precision: str = "fp32"

    @property
    def dims(self) -> dict[str, int]:
        """Width of each vector: ``video``/``audio`` (the modalities the model has) and ``fused``."""
        model = D.unwrap(self.predictor.model)
        c = model.config
        dims = {m: int(c.embed_dim) for m in ("video", "audio") if c.modality in ("av", m)}
        return {**dims, "fused": int(model.fc_norm.normalized_shape[0])}

    def made(self, source: str) -> dict[str, str]:
        """What a file's vectors depend on besides the clips: stored in it, checked on a rerun."""
        views = self.predictor.views
        return {
            "source": source,
            "checkpoint": os.path.abspath(self.predictor.path),
            "precision": self.precision,
            "views": f"{views.test_segments} segments x {views.test_crops} crops of {views.num_frames} frames "
            f"at stride {views.sampling_rate}, {views.image_size} px",
        }

    @torch.no_grad()
    def __call__(self, video: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.predictor
        with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = D.unwrap(p.model).embed(video.to(p.device), audio.to(p.device))
        return {name: x.float().cpu() for name, x in out.items()}


@dataclass
class Rows:
    """The clips of one input as their views arrive: views of a clip (rows sharing a key) are
    summed and counted, so a clip whose views were split over batches still averages right."""

    dims: dict[str, int]
    keys: dict[str, int] = field(default_factory=dict)  # key -> row
    labels: list[int] = field(default_factory=list)
    targets: list[list[float] | None] = field(default_factory=list)
    sums: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    counts: list[int] = field(default_factory=list)

    def add(
        self, keys: list[str], labels: list[int], targets: torch.Tensor | None, views: dict[str, torch.Tensor]
    ) -> None:
        """Add a batch of views (``views``: per name, one row per entry of ``keys``)."""
        for i, key in enumerate(keys):
            row = self.keys.get(key)
            if row is None:
                row = self.keys[key] = len(self.counts)
                self.labels.append(int(labels[i]))
                self.targets.append(None if targets is None else targets[i].tolist())
                self.counts.append(0)
                for name in self.dims:
                    self.sums.setdefault(name, []).append(torch.zeros(self.dims[name]))
            self.counts[row] += 1
            for name in self.dims:
                self.sums[name][row] += views[name][i]

    def arrays(self) -> dict[str, np.ndarray]:
        """What the input's ``.npz`` holds (besides ``source`` and ``checkpoint``)."""
        counts = torch.tensor(self.counts, dtype=torch.float32).unsqueeze(1)
        out: dict[str, np.ndarray] = {"keys": np.array(list(self.keys), dtype=str)}
        for name, width in self.dims.items():
            rows = self.sums.get(name)
            out[name] = (torch.stack(rows) / counts).numpy() if rows else np.zeros((0, width), np.float32)
        if any(label >= 0 for label in self.labels):
            out["label"] = np.array(self.labels, dtype=np.int64)
        if self.targets and all(t is not None for t in self.targets):
            out["targets"] = np.array(self.targets, dtype=np.float32)
        return out


def shard_rows(embedder: Embedder, shard: str, batch_size: int, num_workers: int) -> Rows:
    """The clips of one shard, batched as ``avf-train predict`` batches them (``batch_size``
    clips of all their test views)."""
    predictor = embedder.predictor
    stream = ClipStream(
        [shard], predictor.views, batch_size, train=False, seed=predictor.config.run.seed, num_workers=num_workers
    )
    rows = Rows(embedder.dims)
    batches = iter(make_loader(stream, num_workers))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return rows
        except DataError as exc:  # raised in a loader worker: torch wraps it in its traceback
            raise DataError(f"{shard}: {one_line(exc)}") from None
        rows.add(batch["key"], batch["label"].tolist(), batch.get("targets"), embedder(batch["video"], batch["audio"]))


def video_views(path: str, predictor: Predictor) -> tuple[torch.Tensor, torch.Tensor]:
    """A video file's test views ``(V, 3, T, S, S)`` and ``(V, 1, A, 128)``: decoded as avf-data
    decodes sources into shard samples, then cut exactly as the shards' test views are."""
    from avf_data.media import MediaError, load_media

    try:
        media = load_media(path)
    except MediaError as exc:
        raise StageError(f"cannot read video {path}: {exc}") from None
    if media.audio_coverage < 0.5:
        print(f"[avf-train embed] note: {path} has audio for {media.audio_coverage:.0%} of its frames", flush=True)
    views = predictor.views
    made = [
        make_view(media.frames, media.fps, media.audio, media.sample_rate, views, None, view=v)
        for v in range(views.num_views)
    ]
    return torch.stack([m["video"] for m in made]), torch.stack([m["audio"] for m in made])


def video_rows(embedder: Embedder, path: str) -> Rows:
    """One video file as one clip, keyed by its file name without the extension."""
    video, audio = video_views(path, embedder.predictor)
    rows = Rows(embedder.dims)
    rows.add([Path(path).stem] * len(video), [-1] * len(video), None, embedder(video, audio))
    return rows


def finished_clips(path: Path, made: dict[str, str]) -> int | None:
    """Clips in ``path`` when an earlier run finished it as ``made`` says (input, checkpoint,
    precision, views), None when it is not there yet. A file made otherwise is refused: vectors
    of two checkpoints or view settings mixed in one folder would go unseen."""
    if not path.exists():
        return None
    with np.load(path) as saved:
        differ = [f"{k} {saved[k]} (now {v})" for k, v in made.items() if k not in saved or str(saved[k]) != v]
        if differ:
            raise FileExistsError(f"{path} was made with another {', '.join(differ)}; use another --out")
        return len(saved["keys"])


def save_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """``write(file)`` into ``path.tmp``, then rename: a reader or a rerun never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


def write_index(out: Path, embedder: Embedder, files: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """``OUT/embeddings.json``: the finished files (name -> source, clips) and what their vectors are."""
    p = embedder.predictor
    views = p.views
    index = {
        "checkpoint": os.path.abspath(p.path),
        "model_name": p.model_name,
        "dims": embedder.dims,
        "views": VIEWS_NOTE,
        "test_segments": views.test_segments,
        "test_crops": views.test_crops,
        "precision": embedder.precision,
        "clips": sum(n for _, n in files.values()),
        "files": [{"file": name, "source": src, "clips": n} for name, (src, n) in sorted(files.items())],
    }
    save_atomic(out / INDEX, lambda fh: fh.write((json.dumps(index, indent=2) + "\n").encode()))
    return index


def embed_inputs(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    data: str | None = None,
    videos: list[str] | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    data_overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda line: print(f"[avf-train embed] {line}", flush=True),
) -> dict[str, Any]:
    """Embed the clips of ``data`` (shards) or of ``videos`` (one clip per file) into ``out_dir``
    (see the module docstring); inputs finished by an earlier run are skipped. Returns the index."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("embed runs in one process; start it without torchrun")
    kind, sources = _sources(data, videos)
    predictor = load_predictor(checkpoint, D.init(device).device, data_overrides)
    embedder = Embedder(predictor, precision)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"embeddings-{i:06d}.npz" for i in range(len(sources))]
    files: dict[str, tuple[str, int]] = {}
    for name, source in zip(names, sources, strict=True):
        clips = finished_clips(out / name, embedder.made(source))
        if clips is not None:
            files[name] = (source, clips)
    if files:
        log(f"skipping {len(files)} finished {kind}{'s' if len(files) > 1 else ''} in {out}")
    todo = [(n, s) for n, s in zip(names, sources, strict=True) if n not in files]
    for done, (name, source) in enumerate(todo, 1):
        t0 = time.perf_counter()
        if kind == "shard":
            rows = shard_rows(embedder, source, batch_size, num_workers)
        else:
            rows = video_rows(embedder, source)
        arrays = {**rows.arrays(), **{k: np.array(v) for k, v in embedder.made(source).items()}}
        save_atomic(out / name, lambda fh, a=arrays: np.savez(fh, **a))
        files[name] = (source, len(rows.keys))
        write_index(out, embedder, files)  # after every input: the index always lists what is there
        rate = len(rows.keys) / max(time.perf_counter() - t0, 1e-9)
        log(f"{kind} {done}/{len(todo)} {source}: {len(rows.keys)} clips -> {out / name} ({rate:.1f} clips/s)")
    return write_index(out, embedder, files)


def _sources(data: str | None, videos: list[str] | None) -> tuple[str, list[str]]:
    """("shard", sorted shard names) or ("video", absolute video paths); one of the two kinds."""
    if bool(data) == bool(videos):
        raise ConfigError("embed takes --data SHARDS or --video FILE [FILE ...], one of the two")
    if data:  # local shards by absolute path: a rerun from another folder still finds its files
        return "shard", [os.path.abspath(s) if os.path.exists(s) else s for s in resolve_shards(data)]
    assert videos is not None
    for v in videos:
        if not Path(v).is_file():
            raise FileNotFoundError(f"video {v} does not exist")
    return "video", [os.path.abspath(v) for v in videos]


def load_embeddings(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """All the files ``embeddings.json`` lists in ``out_dir``, concatenated: ``keys``, ``fused``,
    ``video``/``audio``, and ``label`` (-1 for clips of unlabelled shards) or ``targets`` when present."""
    out = Path(out_dir)
    index = json.loads((out / INDEX).read_text())
    parts = []
    for entry in index["files"]:
        with np.load(out / entry["file"]) as saved:
            parts.append({k: saved[k] for k in saved.files if saved[k].ndim})  # not source, checkpoint, ...
    if not parts:
        return {}
    if any("label" in p for p in parts):
        for p in parts:
            p.setdefault("label", np.full(len(p["keys"]), -1, np.int64))
    names = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: np.concatenate([p[k] for p in parts]) for k in names}


def run_embed(args: argparse.Namespace, data_overrides: dict[str, Any]) -> int:
    """``avf-train embed``: embed, then one closing line with the counts and where the files are."""
    if args.out.endswith((".npz", ".json")):
        raise ConfigError(f"--out {args.out!r} looks like a file; --out is the folder that gets embeddings-*.npz")
    index = embed_inputs(
        args.checkpoint,
        args.out,
        data=args.data,
        videos=args.video,
        batch_size=args.batch_size or 4,
        num_workers=loader_workers(args.num_workers),
        device=args.device or "auto",
        precision=args.precision or "fp32",
        data_overrides=data_overrides,
    )
    dims = ", ".join(f"{k} {v}-d" for k, v in index["dims"].items())
    views = index["test_segments"] * index["test_crops"]
    print(
        f"avf-train embed: {index['clips']} clips from {len(index['files'])} file(s) in "
        f"{Path(args.out) / 'embeddings-*.npz'} "
        f"(index {INDEX}; {dims}; mean of {views} test views per clip)",
        flush=True,
    )
    return 0
