"""The rows of ``manifest.jsonl`` and ``rejects.jsonl``, each made by one constructor.

Rows travel as plain dicts (``build.jsonl``, the JSONL files, avf-train's sample counts), so
these dataclasses are where their fields are defined and filled: the pipeline, the labelled
import, crash handling and the sync pass all build rows here, and a field means the same
everywhere (lhotse's ``Cut``/``Recording`` with ``to_dict``/``from_dict`` is the model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RejectRow:
    """A rejected stretch of an input: ``[start, end)`` seconds, why (``code``: stable,
    ``<stage>.<what>``; ``reason``: free text with the numbers), plus stage-specific fields
    (``sync``, ``dlib_scores``, ``blur``, ``thumb``, ``key``, ...) in ``extra``."""

    source: str
    input_id: str
    start: float
    end: float
    stage: str
    code: str
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row = {
            "source": self.source,
            "input_id": self.input_id,
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "seconds": round(self.end - self.start, 6),
            "stage": self.stage,
            "code": self.code,
            "reason": self.reason,
        }
        row.update(self.extra)
        return row

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RejectRow:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        extra = {k: v for k, v in d.items() if k not in names and k != "seconds"}
        return cls(
            source=d["source"],
            input_id=d.get("input_id", ""),
            start=float(d["start"]),
            end=float(d["end"]),
            stage=d["stage"],
            code=d.get("code") or f"{d['stage']}.other",
            reason=d.get("reason", ""),
            extra=extra,
        )


LABEL_FIELDS = ("label", "label_name", "subject", "fold", "targets")


@dataclass
class ManifestRow:
    """An accepted clip: where its sample is (``key`` in ``shard``), what it was cut from, and
    the scores a user filters on later (sync, blur, face size, measure-mode ``flags``)."""

    key: str
    source: str
    input_id: str
    clip_index: int
    start: float
    end: float
    num_frames: int
    shard: str | None = None
    sync_offset: int | None = None
    sync_confidence: float | None = None
    sync_method: str = "none"
    sync_enforced: bool = False
    blur: float | None = None
    face_side: float | None = None
    source_vfr: bool = False
    flags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # labels (import), thumb, sync pass fields

    @classmethod
    def from_meta(cls, meta: dict[str, Any], label: dict[str, Any] | None = None) -> ManifestRow:
        """The row of a sample from its json metadata (and the import's label fields). Without
        SyncNet the weight-free scorer's numbers are an estimate, not a verdict: they go to
        ``sync_estimate`` and leave ``sync_offset``/``sync_confidence`` empty."""
        extra = {k: label.get(k) for k in LABEL_FIELDS if k in label} if label is not None else {}
        estimate = meta.get("sync_estimate")
        if estimate:
            extra["sync_estimate"] = {k: estimate.get(k) for k in ("method", "offset_frames", "confidence")}
        return cls(
            key=meta["key"],
            source=meta["source"],
            input_id=meta["input_id"],
            clip_index=int(meta["clip_index"]),
            start=meta["start"],
            end=meta["end"],
            num_frames=int(meta["num_frames"]),
            sync_offset=meta.get("sync_offset"),
            sync_confidence=meta.get("sync_confidence"),
            sync_method=meta.get("sync_method") or "none",
            sync_enforced=bool(meta.get("sync_enforced")),
            blur=meta.get("blur"),
            face_side=meta.get("face_side"),
            source_vfr=bool(meta.get("source_vfr")),
            flags=list(meta.get("flags", [])),
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "flags")}
        row["seconds"] = round(float(self.end) - float(self.start), 6)
        if self.flags:
            row["flags"] = list(self.flags)
        row.update(self.extra)
        return row

    def rejected(self, stage: str, code: str, reason: str, **extra: Any) -> RejectRow:
        """This clip as a reject row (a later pass, e.g. ``avf-data sync``, turned it down)."""
        keep = {"key": self.key, **({"thumb": self.extra["thumb"]} if "thumb" in self.extra else {})}
        return RejectRow(
            self.source, self.input_id, float(self.start), float(self.end), stage, code, reason, {**keep, **extra}
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestRow:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: d[k] for k in names if k in d}
        for k, default in (("flags", []), ("clip_index", 0), ("num_frames", 0), ("input_id", "")):
            kwargs.setdefault(k, default)  # rows of older versions lack some fields
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in names and k != "seconds"})
