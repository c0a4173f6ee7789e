"""``stats.json`` as counters: one input record (or one clip the sync pass moved) at a time.

The statistics of a 1.36 M-input build are sums, maxima and a table per reason code, so they
are accumulated while the logs stream past; nothing per input is kept.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

METHOD_SYNCNET = "syncnet_v2"  # the sync pass's scorer (avf_data.stages.sync names it so too)


def reject_code(row: dict[str, Any]) -> str:
    """A reject row's reason code (rows of older builds have none: ``<stage>.other``)."""
    return row.get("code") or f"{row.get('stage', '?')}.other"


def is_pseudo_input(record: dict[str, Any]) -> bool:
    """The labelled import logs its bad CSV rows as one pseudo-input: rows, not an input."""
    return str(record.get("input_id", "")).startswith("csvrows_")


def _stage_table() -> dict[str, float]:
    return {"in": 0, "out": 0, "seconds_in": 0.0, "seconds_out": 0.0}


class StatsAccumulator:
    """Totals over finished inputs, as :func:`result` returns them for ``stats.json``.
    ``stage_order``: the stages' names as the tables list them (the pipeline's order)."""

    def __init__(self, stage_order: list[str] | None = None) -> None:
        self.stages: dict[str, dict[str, float]] = {s: _stage_table() for s in stage_order or ["decode"]}
        self.codes: dict[str, dict[str, float]] = {}
        self.reject_seconds: Counter[str] = Counter()
        self.methods: Counter[str] = Counter()
        self.timing: Counter[str] = Counter()
        self.enforced: set[bool] = set()
        self.tot: dict[str, float] = {
            "inputs": 0,
            "inputs_rejected": 0,
            "inputs_vfr": 0,
            "clips": 0,
            "frames_in": 0,
            "seconds_in": 0.0,
            "seconds_accepted": 0.0,
            "seconds_rejected": 0.0,
            "processing_seconds": 0.0,
            "cpu_seconds": 0.0,
            "peak_worker_rss_mb": 0.0,
        }

    def add_reject(self, row: dict[str, Any]) -> None:
        c = self.codes.setdefault(reject_code(row), {"count": 0, "seconds": 0.0})
        c["count"] += 1
        c["seconds"] = round(c["seconds"] + row.get("seconds", 0.0), 3)

    def add_record(self, rec: dict[str, Any]) -> None:
        """One input's record from a task line of the build log."""
        if is_pseudo_input(rec):
            for r in rec["rejects"]:
                self.add_reject(r)
            return
        tot = self.tot
        tot["inputs"] += 1
        tot["inputs_vfr"] += bool(rec.get("source_vfr"))
        tot["frames_in"] += rec.get("frames", 0)
        tot["seconds_in"] += rec.get("seconds", 0.0)
        tot["processing_seconds"] += rec.get("proc_seconds", 0.0)
        tot["cpu_seconds"] += rec.get("cpu_seconds", 0.0)
        tot["peak_worker_rss_mb"] = max(tot["peak_worker_rss_mb"], rec.get("peak_rss_mb", 0.0))
        tot["clips"] += len(rec["manifest"])
        tot["seconds_accepted"] += sum(r["seconds"] for r in rec["manifest"])
        tot["seconds_rejected"] += sum(r["seconds"] for r in rec["rejects"])
        if not rec["manifest"] and any(
            r["stage"] in ("decode", "error") and r.get("start", 0.0) == 0.0 for r in rec["rejects"]
        ):
            tot["inputs_rejected"] += 1
        if "sync_enforced" in rec:
            self.enforced.add(bool(rec["sync_enforced"]))
        for name, d in rec.get("stages", {}).items():
            agg = self.stages.setdefault(name, _stage_table())
            for k in agg:
                agg[k] += d.get(k, 0)
        for r in rec["rejects"]:
            self.add_reject(r)
            self.reject_seconds[r["stage"]] += r["seconds"]
        for m in rec.get("sync_methods", []):
            self.methods[m] += 1
        for k, v in rec.get("timing", {}).items():
            self.timing[k] += v

    def move_to_rejects(self, row: dict[str, Any], reject: dict[str, Any]) -> None:
        """A clip of the manifest became a reject row (the sync pass turned it down): it left
        the sync stage's output and never reached the quality stage."""
        seconds = float(row.get("seconds", 0.0))
        self.tot["clips"] -= 1
        self.tot["seconds_accepted"] -= seconds
        self.tot["seconds_rejected"] += seconds
        self.add_reject(reject)
        self.reject_seconds[reject["stage"]] += seconds
        for name, fields in (("sync", ("out",)), ("quality", ("in", "out"))):
            d = self.stages.get(name)
            if not d:
                continue
            for f in fields:
                d[f] = max(0, d[f] - 1)
                d[f"seconds_{f}"] = max(0.0, d[f"seconds_{f}"] - seconds)

    def judged_by_syncnet(self) -> None:
        """A sync pass scored every shard: every input's clips were judged by SyncNet."""
        self.methods = Counter({METHOD_SYNCNET: int(self.tot["inputs"])})
        self.enforced = {True}

    def result(self) -> dict[str, Any]:
        tot = dict(self.tot)
        for k in ("seconds_in", "seconds_accepted", "seconds_rejected", "processing_seconds", "cpu_seconds"):
            tot[k] = round(tot[k], 3)
        stages = {
            name: {**d, "seconds_in": round(d["seconds_in"], 3), "seconds_out": round(d["seconds_out"], 3)}
            for name, d in self.stages.items()
        }
        by_code = dict(sorted(self.codes.items(), key=lambda kv: (-kv[1]["seconds"], kv[0])))
        methods = list(self.methods)
        return {
            **tot,
            "stages": stages,
            "rejects_by_code": by_code,
            "rejected_seconds_by_stage": {k: round(v, 3) for k, v in self.reject_seconds.items()},
            "sync_methods": dict(self.methods),
            "sync_enforced": (self.enforced == {True}) if self.enforced else None,
            "sync_scorer": (methods[0] if len(methods) == 1 else ", ".join(methods)) if methods else "not run",
            "stage_cpu_seconds": {k: round(v, 3) for k, v in self.timing.items()},
        }


def stage_warnings(stats: dict[str, Any], threshold: float = 0.5) -> list[str]:
    """One line per stage that rejected more than ``threshold`` of the seconds it was given:
    a default that throws away most of a corpus deserves a look before anyone trains on it."""
    out = []
    for name, d in stats["stages"].items():
        s_in = d.get("seconds_in", 0.0)
        if s_in > 0 and (s_in - d.get("seconds_out", 0.0)) / s_in > threshold:
            codes = [
                c
                for c in stats["rejects_by_code"]
                if c.startswith(name + ".") or (name == "decode" and c.startswith("error."))
            ][:3]
            out.append(
                f"stage '{name}' rejected {(s_in - d['seconds_out']) / s_in:.0%} of its "
                f"{s_in:.1f} s ({', '.join(codes) or 'see rejects.jsonl'})"
            )
    return out


def sync_banner(stats: dict[str, Any]) -> str | None:
    """The warning every output of a build without enforced sync carries."""
    if stats.get("sync_enforced") is not False:
        return None
    return (
        "sync NOT enforced: no SyncNet weights, so audio-visual sync was measured with the weight-free "
        "fallback and nothing was rejected for it (pass --syncnet-weights, or run `avf-data sync` later)"
    )
