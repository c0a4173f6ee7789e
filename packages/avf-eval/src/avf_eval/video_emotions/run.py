"""``predict_video``: raw video in, emotion probabilities per clip and for the whole video out.

Per clip the test views are merged exactly like ``avf-eval score`` merges views (softmax per
view, mean). The whole-video distribution is the mean of the clip distributions weighted by
clip duration, so a long clip counts more than a short one and the result still sums to 1.
For a regression checkpoint the same weighting averages the raw outputs.

The views of a clip are avf-train's test views (``avf_train.transforms.make_view`` in test mode:
``test_segments`` x ``test_crops`` of the checkpoint's config), run through the same
``avf_train.modeling.Predictor`` as ``avf-train predict``, so a clip is seen exactly as it sees
it. Views that come out identical (the crops of a square face clip, the segments of a clip
shorter than one window) are run once; since they repeat in equal numbers, the mean is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..aggregation import softmax
from ..protocols.types import Protocol
from .checkpoint import LoadedModel, check_device, load_model
from .curate import CuratedClip, curate_video


class NoUsableClipsError(ValueError):
    """Curation kept no clip (no face, only silence, ...); the message lists the reasons."""


@dataclass(frozen=True)
class ClipPrediction:
    key: str
    start: float
    end: float
    views: int
    scores: list[float]  # probabilities (classification) or outputs (regression)


@dataclass(frozen=True)
class VideoPrediction:
    video: str
    checkpoint: str
    model_name: str
    task: str
    names: list[str]
    names_source: str
    clips: list[ClipPrediction]
    scores: list[float]
    rejects: list[dict[str, Any]]

    @property
    def top(self) -> str:
        """Most probable class (classification) for the whole video."""
        return self.names[int(np.argmax(self.scores))]


def clip_views(clip: CuratedClip, loaded: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, 3, T, S, S)`` video and ``(V, 1, A, 128)`` fbank of the clip's distinct test views."""
    from avf_train.transforms import make_view

    views: list[dict[str, torch.Tensor]] = []
    for v in range(loaded.views.num_views):
        view = make_view(clip.frames, clip.fps, clip.audio, clip.sample_rate, loaded.views, None, view=v)
        if not any(torch.equal(view["video"], u["video"]) and torch.equal(view["audio"], u["audio"]) for u in views):
            views.append(view)
    return torch.stack([u["video"] for u in views]), torch.stack([u["audio"] for u in views])


def _run_clip(loaded: LoadedModel, clip: CuratedClip, batch: int = 8) -> tuple[np.ndarray, int]:
    video, audio = clip_views(clip, loaded)
    outputs = []
    for i in range(0, len(video), batch):
        outputs.append(loaded.predictor(video[i : i + batch], audio[i : i + batch]).numpy().astype(np.float64))
    raw = np.concatenate(outputs)
    merged = softmax(raw).mean(axis=0) if loaded.task == "classification" else raw.mean(axis=0)
    return merged, len(raw)


def _reject_summary(rejects: list[dict[str, Any]]) -> str:
    if not rejects:
        return "no clip came out of curation"
    return "; ".join(
        f"{r.get('stage')}: {r.get('reason')} ({r.get('start', 0):.2f}-{r.get('end', 0):.2f} s)" for r in rejects[:5]
    )


def predict_video(
    video: str | Path,
    checkpoint: str | Path,
    *,
    device: str = "auto",
    protocol: Protocol | None = None,
    curation_config: Any = None,
) -> VideoPrediction:
    """Curate ``video``, run ``checkpoint`` on every clip, return per-clip and whole-video scores."""
    check_device(device)  # a missing GPU is named as such, before the video or checkpoint is read
    path = Path(video)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    loaded = load_model(checkpoint, device, protocol)
    curated = curate_video(path, curation_config)
    rejects = [dict(r) for r in curated.rejects]
    if not curated.clips:
        raise NoUsableClipsError(f"no usable face clip in {path}: {_reject_summary(rejects)}")
    clips, weights = [], []
    for clip in curated.clips:
        scores, views = _run_clip(loaded, clip)
        clips.append(ClipPrediction(clip.key, round(clip.start, 3), round(clip.end, 3), views, scores.tolist()))
        weights.append(max(clip.end - clip.start, 1e-6))
    stacked = np.array([c.scores for c in clips])
    overall = (stacked * np.array(weights)[:, None]).sum(axis=0) / sum(weights)
    return VideoPrediction(
        video=str(path),
        checkpoint=loaded.path,
        model_name=loaded.model_name,
        task=loaded.task,
        names=list(loaded.names),
        names_source=loaded.names_source,
        clips=clips,
        scores=overall.tolist(),
        rejects=rejects,
    )


def render_prediction(result: VideoPrediction, fmt: str = "text") -> str:
    """Text for people (top classes per clip), or JSON for scripts."""
    if fmt == "json":
        return json.dumps(asdict(result), indent=2)
    kind = "probability" if result.task == "classification" else "output"
    lines = [
        f"{result.video}: {len(result.clips)} clip(s), model {result.model_name} ({result.checkpoint})",
        f"names: {result.names_source}",
    ]

    def describe(scores: list[float]) -> str:
        if result.task != "classification":
            return ", ".join(f"{n} {s:+.3f}" for n, s in zip(result.names, scores, strict=False))
        order = np.argsort(scores)[::-1][:3]
        return ", ".join(f"{result.names[i]} {100 * scores[i]:.1f}%" for i in order)

    lines.append(f"whole video ({kind}, duration-weighted): {describe(result.scores)}")
    for clip in result.clips:
        lines.append(f"  {clip.start:7.2f}-{clip.end:7.2f} s  {clip.views} view(s)  {describe(clip.scores)}")
    if result.rejects:
        lines.append(f"rejected spans: {_reject_summary(result.rejects)}")
    return "\n".join(lines)
