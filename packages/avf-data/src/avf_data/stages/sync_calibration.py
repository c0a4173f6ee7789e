"""Which sync expert scores a corpus, and with which thresholds: the sidecar ``WEIGHTS.json``.

Why a sidecar: the rejection rule (``|offset| > 3`` frames or ``confidence < 3``) was tuned for
the authors' ``syncnet_v2.model``. A network of the same architecture trained on one's own
corpus (``avf-train syncnet``) measures embedding distances on a scale of its own, so the run
that trains it also measures where its in-sync clips and its mismatched pairs fall, and writes
the threshold and the offset range next to the weights (``expert.model`` ->
``expert.model.json``). The weights stay a plain state dict in the official layout: either
file loads wherever the other does, and the official file simply has no sidecar.

The rule (``sync.calibration``):

* ``auto`` (default): a sidecar beside the weights replaces ``sync.min_confidence_syncnet``,
  ``sync.max_offset_frames`` and ``sync.input`` with its own values; without one the config's
  values apply (the reference's 3 / ±3 unless changed);
* ``config``: the config's values always apply (thresholds of one's own choosing).

A sidecar names the SHA-1 of the weights it was measured with; one beside other weights (a
copied or retrained file) is an error, not a silent mis-calibration. A sidecar that calls its
expert weak (``calibration.weak``: it barely told in-sync clips from mismatched pairs or from
5-frame-late audio, or could not be measured) is obeyed but warned about in the build's or sync
pass's output and report: a rule measured on an expert at chance rejects good clips as readily
as bad ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CALIBRATION_MODES",
    "FORMAT",
    "INPUTS",
    "Calibration",
    "apply_calibration",
    "expert_line",
    "read_calibration",
    "sidecar_path",
    "weights_sha1",
    "write_calibration",
]

FORMAT = "avf-syncnet-expert/1"
CALIBRATION_MODES = ("auto", "config")
INPUTS = ("source", "crop")  # what SyncNet sees: the reference crop from the source, or the training crop


@dataclass(frozen=True)
class Calibration:
    """The decision rule a sidecar gives its weights, and what it was measured on."""

    min_confidence: float
    max_offset_frames: int
    input: str
    weights_sha1: str
    measured_on: str  # e.g. "40 clips of --val-data 'held/*.tar' (in sync vs another clip's audio)"
    path: str  # the sidecar file
    warning: str | None = None  # set when the sidecar calls its expert weak


def sidecar_path(weights: str | os.PathLike) -> Path:
    """``WEIGHTS.json`` for ``WEIGHTS`` (the name is appended, so ``x.model`` -> ``x.model.json``)."""
    return Path(os.fspath(weights) + ".json")


def weights_sha1(path: str | os.PathLike) -> str:
    """SHA-1 of a weights file (what the sync pass's log and a sidecar identify weights by)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_calibration(weights: str | os.PathLike) -> Calibration | None:
    """The sidecar of ``weights``, checked; None when there is none. ValueError (one line,
    naming the file) when it is unreadable, incomplete or describes other weights."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format') if isinstance(data, dict) else data!r}, not {FORMAT!r}")
        rule = data["rule"]
        cal = Calibration(
            min_confidence=float(rule["min_confidence"]),
            max_offset_frames=int(rule["max_offset_frames"]),
            input=str(data["input"]),
            weights_sha1=str(data["weights_sha1"]),
            measured_on=str((data.get("calibration") or {}).get("measured_on", "unknown")),
            path=str(path),
            warning=_weak_warning(weights, data.get("calibration") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"sync-expert calibration {path} is not usable ({type(exc).__name__}: {exc})") from None
    if cal.input not in INPUTS:
        raise ValueError(f"sync-expert calibration {path}: input {cal.input!r} is not one of {', '.join(INPUTS)}")
    actual = weights_sha1(weights)
    if actual != cal.weights_sha1:
        raise ValueError(
            f"sync-expert calibration {path} was measured with other weights (sha1 {cal.weights_sha1[:12]}, "
            f"{Path(weights).name} has {actual[:12]}); keep each weights file with its own .json, or delete it "
            "to score with the config's thresholds"
        )
    return cal


def _weak_warning(weights: str | os.PathLike, calibration: dict[str, Any]) -> str | None:
    """The warning for an expert its own sidecar calls weak; None for any other."""
    if not calibration.get("weak"):
        return None
    kept, rejected = calibration.get("in_sync_kept"), calibration.get("mismatched_rejected")
    late = calibration.get("shifted5_rejected")
    if kept is None or rejected is None:
        how = "its rule could not be measured"
    else:
        how = (
            f"on its calibration clips it kept {float(kept):.0%} of the clips in sync and rejected "
            f"{float(rejected):.0%} of the mismatched pairs"
        )
        if late is not None:
            how += f" and {float(late):.0%} of the clips with audio 5 frames late"
    return (
        f"sync expert {Path(weights).name} is weak: {how} ({calibration.get('measured_on', 'unknown')}); enforcing it "
        "may reject good clips: train it longer or on more clips, or set your own thresholds with "
        "--set sync.calibration=config"
    )


def write_calibration(weights: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write the sidecar of ``weights`` atomically: ``payload`` (``rule``, ``input``,
    ``calibration``, ...) plus the format tag and the weights' SHA-1."""
    path = sidecar_path(weights)
    data = {"format": FORMAT, "weights_sha1": weights_sha1(weights), **payload}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def apply_calibration(cfg: Any, weights: str | os.PathLike | None) -> tuple[Any, dict[str, Any] | None]:
    """``cfg`` (a ``SyncConfig``) with the sidecar's rule applied per ``cfg.calibration``, and a
    description of the expert for stats.json and the report (None without weights)."""
    mode = getattr(cfg, "calibration", "auto")
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"sync.calibration must be one of {', '.join(CALIBRATION_MODES)}, not {mode!r}")
    if getattr(cfg, "input", "source") not in INPUTS:
        raise ValueError(f"sync.input must be one of {', '.join(INPUTS)}, not {cfg.input!r}")
    if not weights:
        return cfg, None
    cal = read_calibration(weights) if mode == "auto" else None
    if cal is not None:
        cfg = dataclasses.replace(
            cfg, min_confidence_syncnet=cal.min_confidence, max_offset_frames=cal.max_offset_frames, input=cal.input
        )
        source = f"sidecar {cal.path} (measured on {cal.measured_on})"
    elif mode == "config":
        source = "the config (sync.calibration: config)"
    else:
        source = "the config; no sidecar beside the weights (the reference's 3 / ±3 unless changed)"
    return cfg, {
        "weights": Path(weights).name,
        "weights_path": os.path.abspath(weights),
        "weights_sha1": cal.weights_sha1 if cal is not None else _sha1_if_file(weights),
        "min_confidence": float(cfg.min_confidence_syncnet),
        "max_offset_frames": int(cfg.max_offset_frames),
        "input": getattr(cfg, "input", "source"),
        "calibration": source,
        "warning": cal.warning if cal is not None else None,
    }


def _sha1_if_file(path: str | os.PathLike) -> str | None:
    """The SHA-1 of the weights, or None for a path that is not a file (its loader says why)."""
    return weights_sha1(path) if os.path.isfile(path) else None


def expert_line(expert: dict[str, Any]) -> str:
    """One line for reports: which weights decided and by which rule."""
    return (
        f"`{expert['weights']}` (sha1 {(expert['weights_sha1'] or '?')[:12]}): reject |offset| > "
        f"{expert['max_offset_frames']} frames or confidence < {expert['min_confidence']:g}, SyncNet input "
        f"{expert['input']}; thresholds from {expert['calibration']}"
        + (f". WARNING: {expert['warning']}" if expert.get("warning") else "")
    )
