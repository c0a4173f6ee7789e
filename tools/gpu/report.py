"""``results.md`` from ``results.jsonl``: the issue's goals with pass/fail, then one table per section.

Kept apart from the sections so that a report can be rebuilt from a results file alone
(``python tools/gpu/report.py DIR``), e.g. after merging the lines of two device calls.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common import (
    GOAL_BASE_164,
    GOAL_BASE_X_HICMAE,
    GOAL_BASE_X_OFFICIAL_32,
    GOAL_E2E_X_STEP,
    GOAL_SYNCNET_FPS,
    MODELS,
    OFFICIAL,
    REPORT,
    read_records,
)

Rec = dict[str, Any]


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 10 ** (-digits) or abs(x) >= 1e6):
            return f"{x:.2e}"
        return f"{x:,.{digits}f}"
    return str(x)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines


def steps_ok(records: list[Rec]) -> list[Rec]:
    return [r for r in records if r.get("section") == "step" and r.get("status") == "ok"]


def best_step(records: list[Rec], model: str, batch: int, compiled: bool | None = None) -> Rec | None:
    """The fastest configuration of a model and batch on the default ("auto") attention backend."""
    rows = [
        r
        for r in steps_ok(records)
        if r["model"] == model
        and r["batch"] == batch
        and r.get("attention_backend", "auto") == "auto"
        and (compiled is None or r["compiled"] == compiled)
    ]
    return max(rows, key=lambda r: r["clips_per_s"], default=None)


def verdict(ok: bool | None, dry: bool) -> str:
    if dry:
        return "n/a (dry run)"
    if ok is None:
        return "not measured"
    return "pass" if ok else "**FAIL**"


def mode(r: Rec) -> str:
    if not r.get("compiled"):
        return "eager"
    backend = r.get("compile_backend", "inductor")
    return "compiled" if backend == "inductor" else f"compiled ({backend} backend)"


def goals(records: list[Rec], dry: bool) -> list[str]:
    rows: list[list[Any]] = []
    base32 = best_step(records, "avfmae_pp_base", 32)
    target32 = GOAL_BASE_X_OFFICIAL_32 * OFFICIAL[("avfmae_pp_base", 32)][1]
    rows.append(
        [
            "Base, batch 32",
            f">= {GOAL_BASE_X_OFFICIAL_32:g} x official (89) = {target32:.0f} clips/s",
            f"{fmt(base32['clips_per_s'])} ({mode(base32)})" if base32 else "—",
            verdict(base32["clips_per_s"] >= target32 if base32 else None, dry),
        ]
    )
    base164 = best_step(records, "avfmae_pp_base", 164)
    rows.append(
        [
            "Base, batch 164",
            f">= {GOAL_BASE_164:.0f} clips/s",
            f"{fmt(base164['clips_per_s'])} ({mode(base164)})" if base164 else "—",
            verdict(base164["clips_per_s"] >= GOAL_BASE_164 if base164 else None, dry),
        ]
    )
    for batch in (32, 164):
        b, h = best_step(records, "avfmae_pp_base", batch), best_step(records, "hicmae_base", batch)
        ratio = b["clips_per_s"] / h["clips_per_s"] if b and h else None
        rows.append(
            [
                f"Base vs HiCMAE-B, batch {batch}",
                f">= {GOAL_BASE_X_HICMAE:g} x",
                f"{ratio:.2f} x ({fmt(b['clips_per_s'])} / {fmt(h['clips_per_s'])})" if ratio else "—",
                verdict(ratio >= GOAL_BASE_X_HICMAE if ratio else None, dry),
            ]
        )
    speeds = [r for r in records if r.get("section") == "syncnet" and r.get("kind") == "speed"]
    best = max(speeds, key=lambda r: r["scorer_frames_per_s"], default=None)
    rows.append(
        [
            "SyncNet scorer (random weights)",
            f">= {GOAL_SYNCNET_FPS:,.0f} frames/s",
            f"{fmt(best['scorer_frames_per_s'])} ({best['precision']})" if best else "—",
            verdict(best["scorer_frames_per_s"] >= GOAL_SYNCNET_FPS if best else None, dry),
        ]
    )
    ratio_text, ok = "—", None
    loader = next((r for r in records if r.get("section") == "loader" and r.get("status") == "ok"), None)
    if loader:
        step = best_step(records, loader["model"], loader["batch"], compiled=False)
        if step:
            ratio = loader["e2e_clips_per_s"] / step["clips_per_s"]
            ratio_text = f"{ratio:.2f} x ({fmt(loader['e2e_clips_per_s'])} / {fmt(step['clips_per_s'])})"
            ok = ratio >= GOAL_E2E_X_STEP
    rows.append(
        [
            "End-to-end vs step-only (same model, batch, eager)",
            f">= {GOAL_E2E_X_STEP:g} x",
            ratio_text,
            verdict(ok, dry),
        ]
    )
    return ["## Goals", "", *table(["goal", "target", "measured", "verdict"], rows), ""]


def step_table(records: list[Rec]) -> list[str]:
    rows = []
    for r in sorted(steps_ok(records), key=lambda r: (list(MODELS).index(r["model"]), r["batch"], r["compiled"])):
        low, high = OFFICIAL.get((r["model"], r["batch"]), (None, None))
        official = None if low is None else (f"{low:.0f}" if low == high else f"{low:.0f}-{high:.0f}")
        rows.append(
            [
                MODELS[r["model"]],
                r["batch"],
                mode(r),
                r["attention"],
                r["clips_per_s"],
                r["step_ms_median"],
                r["step_ms_min"],
                r["step_ms_max"],
                f"{r['peak_mem_gib']:.2f}",
                r["warmup_s"],
                official or "—",
                f"{r['clips_per_s'] / high:.2f} x" if high else "—",
            ]
        )
    header = ["model", "batch", "mode", "attention", "clips/s", "step ms median", "min", "max", "peak GiB"]
    header += ["warm-up s", "official clips/s (H100 fp16)", "x official (upper)"]
    fallbacks = sorted({r["xformers_fallback"] for r in steps_ok(records) if r.get("xformers_fallback")})
    return [
        "## Pre-training step (forward + loss + backward + AdamW)",
        "",
        *table(header, rows),
        "",
        "Random inputs; bf16 autocast (fp32 in the dry run); clips/s over the timed steps; peak GiB is "
        "torch's peak allocation after the warm-up (peak RSS of the process on the CPU).",
        *[f"Attention: {f}" for f in fallbacks],
        "",
    ]


def attention_table(records: list[Rec]) -> list[str]:
    rows, notes = [], set()
    for r in (r for r in records if r.get("section") == "attention" and r.get("status") == "ok"):
        rows.append(
            [
                r["where"],
                "x".join(map(str, r["shape_bnhd"])),
                r.get("sdpa_fwd_ms"),
                r.get("sdpa_fwd_bwd_ms"),
                r.get("xformers_fwd_ms"),
                r.get("xformers_fwd_bwd_ms"),
                r.get("xformers_speedup_fwd_bwd"),
                r.get("max_abs_diff_fwd"),
                r.get("max_abs_diff_bwd"),
                f"{fmt(r.get('sdpa_vs_fp32_fwd'))} / {fmt(r.get('sdpa_vs_fp32_bwd'))}",
                f"{fmt(r.get('xformers_vs_fp32_fwd'))} / {fmt(r.get('xformers_vs_fp32_bwd'))}",
            ]
        )
        if r.get("xformers"):
            notes.add(r["xformers"])
    header = ["call", "B x N x H x D", "SDPA fwd ms", "SDPA fwd+bwd ms", "xformers fwd ms", "xformers fwd+bwd ms"]
    header += [
        "speed-up",
        "max abs diff fwd",
        "max abs diff bwd",
        "SDPA vs fp32 fwd / bwd",
        "xformers vs fp32 fwd / bwd",
    ]
    lines = ["## Attention: xformers against SDPA (same inputs)", "", *table(header, rows), ""]
    lines += [f"xformers: {n}" for n in sorted(notes)] + ([""] if notes else [])
    return lines


def inputs_table(records: list[Rec]) -> list[str]:
    rows = [
        [
            r["batch_index"],
            r["device"],
            "x".join(map(str, r["video_shape"])),
            "x".join(map(str, r["audio_shape"])),
            r["cropped_views"],
            r["max_abs_diff_video"],
            r["max_abs_diff_audio"],
            r["tolerance"],
            r["status"],
            r["cpu_ms"],
            r["device_ms"],
        ]
        for r in records
        if r.get("section") == "inputs" and r.get("status") in ("ok", "mismatch")
    ]
    header = ["batch", "device", "video", "audio", "cropped views", "max abs diff video", "max abs diff audio"]
    header += ["tolerance", "status", "CPU ms", "device ms"]
    return [
        "## model_inputs: device path against the CPU path (demo shards, real loader)",
        "",
        *table(header, rows),
        "",
    ]


def syncnet_tables(records: list[Rec]) -> list[str]:
    speed = [
        [r["precision"], r["device"], r["batch"], r["frames"], r["scorer_frames_per_s"], r["network_frames_per_s"]]
        for r in records
        if r.get("section") == "syncnet" and r.get("kind") == "speed"
    ]
    lines = ["## SyncNet (random weights: no official weights offline)", ""]
    lines += table(["precision", "device", "batch", "frames", "scorer frames/s", "network-only frames/s"], speed)
    lines.append("")
    dec = next((r for r in records if r.get("section") == "syncnet" and r.get("kind") == "decisions"), None)
    if dec:
        first, second = dec["compared"]
        rows = []
        for c in dec["clips"]:
            cells = [c["clip"]]
            for p in (first, second):
                d = c[p]
                cells.append(f"{d['offset']:+d} / {d['confidence']:.3f} / {'keep' if d['keep'] else d['code']}")
            rows.append(cells)
        header = ["clip"] + [f"{p} offset / confidence / decision" for p in (first, second)]
        lines += [*table(header, rows), ""]
        lines.append(
            f"{second} against {first}: offsets equal {dec['offsets_equal']}/{dec['n']}, keep decisions equal "
            f"{dec['keep_equal']}/{dec['n']}, largest confidence difference {fmt(dec['max_abs_diff_confidence'], 4)}; "
            f"largest difference of the distance-per-shift curves {fmt(dec['max_abs_diff_mean_dists'], 4)} "
            f"(smallest spread of a {first} curve: {fmt(dec['min_curve_spread'], 4)})."
            + (f" {dec['note']}." if dec.get("note") else "")
        )
        lines.append("")
    return lines


def loader_table(records: list[Rec], dry: bool) -> list[str]:
    rows = []
    for r in (r for r in records if r.get("section") == "loader" and r.get("status") == "ok"):
        step = best_step(records, r["model"], r["batch"], compiled=False)
        ratio = r["e2e_clips_per_s"] / step["clips_per_s"] if step else None
        rows.append(
            [
                MODELS.get(r["model"], r["model"]),
                r["batch"],
                r["workers"],
                r["steps"],
                ", ".join(f"{x:g}" for x in r["window_clips_per_s"]),
                r["e2e_clips_per_s"],
                step["clips_per_s"] if step else None,
                f"{ratio:.2f} x" if ratio else "—",
                verdict(ratio >= GOAL_E2E_X_STEP if ratio else None, dry),
                r["wall_s"],
            ]
        )
    header = ["model", "batch", "workers", "steps", "clips/s per log window", "end-to-end clips/s"]
    header += ["step-only clips/s", "ratio", "verdict", "wall s"]
    return [
        "## Real pre-training run (avf-train pretrain, demo shards, real loader)",
        "",
        *table(header, rows),
        "",
        "End-to-end: median of the trainer's log windows after the first (which holds the start).",
        "",
    ]


def problems(records: list[Rec]) -> list[str]:
    bad = [r for r in records if r.get("status") not in ("ok", None)]
    if not bad:
        return ["## Failed or skipped", "", "none", ""]
    rows = []
    for r in bad:
        config = " ".join(f"{k}={r[k]}" for k in ("model", "batch", "compiled", "attention_backend") if k in r)
        detail = r.get("error") or r.get("why") or r.get("how") or r.get("timeout_s") or ""
        rows.append(
            [r.get("section", "?"), config, r["status"], str(detail).replace("|", "/").replace("\n", " ")[:300]]
        )
    return ["## Failed or skipped", "", *table(["section", "configuration", "status", "detail"], rows), ""]


def write_report(out: Path) -> Path:
    records = read_records(out)
    run = next((r for r in records if r.get("section") == "run"), {})
    end = next((r for r in records if r.get("kind") == "end"), {})
    env = next((r for r in records if r.get("section") == "env" and r.get("status") == "ok"), {})
    install = next((r for r in records if r.get("section") == "install"), None)
    dry = bool(run.get("dry_run"))
    device = env.get("gpu") or ("CPU" if env else "unknown")
    lines = [f"# GPU check{' (DRY RUN: CPU, tiny sizes; no goal applies)' if dry else ''}", ""]
    lines.append(
        f"Device: {device}; torch {env.get('torch', '?')} (CUDA {env.get('cuda', '-')}); xformers "
        f"{env.get('xformers', 'not available')}"
        + (f" ({env['xformers_probe']})" if env.get("xformers_probe") not in (None, "ok") else "")
        + f"; wall {fmt(end.get('wall_s'))} s "
        f"of a {fmt(run.get('budget_s'), 0)} s budget."
    )
    if install:
        lines.append(
            f"Installed from .gpu-wheels: {', '.join(install.get('installed') or []) or 'nothing'}; already there: "
            f"{', '.join(install.get('present') or []) or 'nothing'}; "
            f"project code from the {install.get('project_from')}."
            + (f" Install error: {install['error']}" if install.get("error") else "")
        )
    lines.append("")
    lines += goals(records, dry)
    lines += step_table(records)
    lines += attention_table(records)
    lines += inputs_table(records)
    lines += syncnet_tables(records)
    lines += loader_table(records, dry)
    lines += problems(records)
    path = out / REPORT
    path.write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1])).read_text())
