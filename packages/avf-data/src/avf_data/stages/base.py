"""One interface for every curation stage, and the loop that runs them.

A stage is a :class:`Stage` subclass in a module of its own, with its ``name``, its config
section (``Config``, a dataclass with a ``mode``), its reason codes and one method,
``run(span, chunk) -> parts``: it looks at a span of frames of the chunk being curated (plus
what earlier stages found, ``span.meta`` / ``span.data``) and returns the parts that span
splits into, each either kept (``code`` None) or flagged with one of its codes, such as
``face.several``, and a free-text ``detail``. The stage only scores; what happens to a flagged
part is the loop's business and depends on the mode (score-then-filter, as NeMo Curator's
``ScoreFilter``; a list of units with one signature, as video2dataset's subsamplers):

``off``      the stage does not run (the crop stage then cuts a fixed centre square);
``measure``  it runs and records its scores; a flagged part is kept, its code listed in
             ``meta["flags"]`` (splitting stages do not split in this mode);
``enforce``  a flagged part becomes a reject row.

So :func:`run_stages` is the one place that counts spans and seconds per stage, times the
stages (CPU seconds) and writes reject rows. The stages of a build, in order, are the list in
:mod:`avf_data.stages.registry`; everything else (config sections, statistics, the report,
``--help``) is derived from it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

MODES = ("off", "measure", "enforce")


@dataclass
class Span:
    """Frames ``[start, end)`` of a chunk on their way through the stages."""

    start: int
    end: int
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-safe: goes into the clip's metadata
    data: dict[str, Any] = field(default_factory=dict)  # arrays for later stages (crop frames, track)

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class Part:
    """What a stage says about (a piece of) a span."""

    start: int
    end: int
    code: str | None = None  # None: keep; else a reason code "<stage>.<what>"
    detail: str | None = None  # human-readable reason, numbers included
    meta: dict[str, Any] = field(default_factory=dict)  # merged into the span's meta
    data: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)  # extra fields of the reject row


class Stage(ABC):
    """A curation stage. Subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]  # its config section and the prefix of its codes
    summary: ClassVar[str]  # one line for --help and the docs
    Config: ClassVar[type]  # its config section: a dataclass with a ``mode`` field
    codes: ClassVar[dict[str, str]]  # reason code -> what it means
    runs_when_off: ClassVar[bool] = False  # later stages need it: in "off" it runs its cheap default

    def __init__(self, cfg: Any, weights: str | None = None) -> None:
        """``cfg``: this stage's config section; ``weights``: the SyncNet weights of the build
        (only the sync stage looks at them)."""
        self.cfg = cfg
        self.mode = cfg.mode

    @abstractmethod
    def run(self, span: Span, chunk: Any) -> list[Part]:
        """The parts ``span`` of ``chunk`` (:class:`avf_data.chunks.Chunk`) splits into."""

    def record(self) -> dict[str, Any]:
        """Fields this stage adds to every input's record (the sync stage: its scorer)."""
        return {}

    @classmethod
    def preload(cls) -> None:
        """Load what the stage needs once (models, lazy modules) before workers fork."""
        return None


Reject = Callable[[str, int, int, str, str, dict[str, Any]], None]
Count = Callable[[str, int, int, int, int, float], None]


def run_stages(stages: list[Stage], spans: list[Span], chunk: Any, reject: Reject, count: Count) -> list[Span]:
    """Run ``stages`` in order over ``spans`` of ``chunk``; returns the spans that survive.

    ``reject(stage, start, end, code, detail, row_extra)`` records a reject row (chunk-relative
    frames); ``count(stage, spans_in, spans_out, frames_in, frames_out, cpu_seconds)`` the
    stage's bookkeeping.
    """
    for stage in stages:
        if stage.mode == "off" and not stage.runs_when_off:
            continue
        t0 = time.process_time()
        kept: list[Span] = []
        for span in spans:
            for part in stage.run(span, chunk):
                if part.code is not None and part.code not in stage.codes:
                    raise ValueError(f"stage {stage.name!r} returned code {part.code!r}, not one of its codes")
                if part.code is not None and stage.mode == "enforce":
                    reject(stage.name, part.start, part.end, part.code, part.detail or part.code, part.row)
                    continue
                meta = {**span.meta, **part.meta}
                if part.code is not None:
                    meta["flags"] = [*meta.get("flags", []), part.code]
                kept.append(Span(part.start, part.end, meta, {**span.data, **part.data}))
        count(
            stage.name,
            len(spans),
            len(kept),
            sum(s.length for s in spans),
            sum(s.length for s in kept),
            time.process_time() - t0,
        )
        spans = kept
    return spans
