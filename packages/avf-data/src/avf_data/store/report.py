"""Human-readable report of a build: ``report.md`` plus ``contact_sheet.png``.

Written for the person deciding whether a corpus is fit to train on: what was kept, what was
thrown away and why (grouped by reason code), per input, and a picture of both.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from ..stages.sync_calibration import expert_line
from .folder import write_atomic
from .stats import sync_banner

TILE = 120
CAPTION_LINES = 5
LINE = 11
WRAP = 22  # characters per caption line at the default bitmap font's width


def contact_sheet(out: Path, accepted: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> Path:
    """Accepted and rejected examples (``thumb``: a picture under ``out``, or none) as one PNG."""
    from PIL import Image, ImageDraw, ImageFont

    cols = 6
    font = ImageFont.load_default()
    cell_h = TILE + CAPTION_LINES * LINE + 8

    def rows(items):
        return max(1, -(-len(items) // cols))

    header = 22
    h = header * 2 + (rows(accepted) + rows(rejected)) * cell_h + 10
    sheet = Image.new("RGB", (cols * (TILE + 10) + 10, h), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    y = 4

    def section(title, items, colour, caption):
        nonlocal y
        draw.text((10, y), title, fill=(0, 0, 0), font=font)
        y += header
        if not items:
            draw.text((10, y + 10), "(none)", fill=(120, 120, 120), font=font)
        for i, item in enumerate(items):
            x = 10 + (i % cols) * (TILE + 10)
            yy = y + (i // cols) * cell_h
            try:
                im = Image.open(out / item["thumb"]).convert("RGB")  # a TypeError when there is none
                im.thumbnail((TILE, TILE))
                sheet.paste(im, (x + (TILE - im.width) // 2, yy + (TILE - im.height) // 2))
            except Exception:  # decode rejects have no picture
                draw.rectangle([x, yy, x + TILE, yy + TILE], fill=(235, 235, 235))
                draw.text((x + 8, yy + TILE // 2 - 6), "no picture", fill=(120, 120, 120), font=font)
            draw.rectangle([x - 1, yy - 1, x + TILE, yy + TILE], outline=colour)
            lines = textwrap.wrap(caption(item), WRAP)
            if len(lines) > CAPTION_LINES:
                lines = lines[: CAPTION_LINES - 1] + [lines[CAPTION_LINES - 1][: WRAP - 3] + "..."]
            for k, line in enumerate(lines):
                draw.text((x, yy + TILE + 2 + LINE * k), line, fill=(40, 40, 40), font=font)
        y += rows(items) * cell_h

    section(
        f"Accepted clips ({len(accepted)} shown)",
        accepted,
        (0, 150, 0),
        lambda r: f"{Path(r['source']).name} {r['start']:.1f}-{r['end']:.1f} s",
    )
    section(
        f"Rejected examples ({len(rejected)} shown)",
        rejected,
        (200, 0, 0),
        lambda r: (
            f"{Path(r['source']).name} {r['start']:.1f}-{r['end']:.1f} s {r.get('code') or r['stage']}: {r['reason']}"
        ),
    )
    path = out / "contact_sheet.png"
    tmp = path.with_name("contact_sheet.tmp.png")
    sheet.save(tmp)
    os.replace(tmp, path)
    return path


def write_report(folder, stats: dict[str, Any], data: dict[str, Any]) -> Path:
    """``report.md`` and ``contact_sheet.png`` from the stats and the bounded report data that
    :mod:`avf_data.store.outputs` collects (examples, the first rows, the first inputs)."""
    contact_sheet(folder.root, data.get("accepted", []), data.get("rejected", []))
    lines = _summary_lines(stats) + _breakdown_lines(stats, data.get("per_input", []))
    lines += _example_lines(stats, data.get("manifest_head", []), data.get("rejects_head", []))
    if stats.get("sync_pass"):
        lines += _sync_pass_lines(stats["sync_pass"])
    write_atomic(folder.report, "\n".join(lines) + "\n")
    return folder.report


def _summary_lines(stats: dict[str, Any]) -> list[str]:
    """Title, warnings first so a bad corpus is obvious at a glance, then the headline numbers."""
    run = stats.get("run", {})
    lines = ["# avf-data curation report", ""]
    banner = sync_banner(stats)
    if banner:
        lines += [f"> **Warning: {banner}.** Clips in this corpus may be out of sync.", ""]
    for w in stats.get("warnings", []):
        lines += [f"> **Warning:** {w}.", ""]
    skipped = run.get("inputs_skipped") or []
    if skipped:
        lines += [
            f"> **Skipped while looking for inputs ({len(skipped)}):** "
            + "; ".join(skipped[:20])
            + (" ..." if len(skipped) > 20 else ""),
            "",
        ]
    shards = stats.get("shards", {})
    return lines + [
        f"- pipeline: `{stats.get('pipeline_version')}`",
        f"- sync scorer: `{stats.get('sync_scorer')}`, enforced: **{stats.get('sync_enforced')}**",
        *([f"- sync expert: {expert_line(stats['sync_expert'])}"] if stats.get("sync_expert") else []),
        f"- inputs: {stats['inputs']} ({stats['inputs_rejected']} rejected whole, "
        f"{stats.get('inputs_vfr', 0)} variable frame rate), accepted clips: {stats['clips']}",
        f"- seconds: {stats['seconds_in']:.2f} in, {stats['seconds_accepted']:.2f} accepted, "
        f"{stats['seconds_rejected']:.2f} rejected",
        f"- shards: {shards.get('count', 0)} ({shards.get('bytes', 0) / 1e6:.1f} MB): "
        f"`{shards.get('pattern', 'shards/*.tar')}`",
        f"- last run: engine `{run.get('engine')}`, {run.get('workers')} workers, "
        f"{run.get('inputs_processed')} inputs processed ({run.get('inputs_skipped_resume')} already done), "
        f"{run.get('wall_seconds')} s wall, {run.get('frames_per_second')} frames/s "
        f"({run.get('frames_per_cpu_second')} per CPU-second of the workers)",
    ]


def _breakdown_lines(stats: dict[str, Any], per_input: list[dict[str, Any]]) -> list[str]:
    """Where the seconds went: per stage, per reject code and per input (the first few), so a bad one stands out."""
    lines = [
        "",
        "## Stages",
        "",
        "| stage | in | out | seconds in | seconds out | kept | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    cpu = stats.get("stage_cpu_seconds", {})
    for name, d in stats["stages"].items():
        kept = d["seconds_out"] / d["seconds_in"] if d["seconds_in"] else 1.0
        lines.append(
            f"| {name} | {d['in']} | {d['out']} | {d['seconds_in']:.2f} | {d['seconds_out']:.2f} | "
            f"{kept:.0%} | {cpu.get(name, 0.0):.2f} |"
        )
    lines += ["", "## Reject reasons", "", "| code | rows | seconds |", "|---|---:|---:|"]
    for code, d in stats["rejects_by_code"].items():
        lines.append(f"| `{code}` | {d['count']} | {d['seconds']:.2f} |")
    more = f" (the first {len(per_input)} of {stats['inputs']})" if len(per_input) < stats["inputs"] else ""
    lines += [
        "",
        f"## Per input{more}",
        "",
        "| source | clips | kept s | rejected s | main reject |",
        "|---|---:|---:|---:|---|",
    ]
    for r in per_input:
        top = max(r["codes"].items(), key=lambda kv: kv[1])[0] if r["codes"] else ""
        lines.append(f"| {Path(r['source']).name} | {r['clips']} | {r['kept']:.2f} | {r['rejected']:.2f} | {top} |")
    return lines


def _example_lines(stats: dict[str, Any], head: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """The contact sheet and the first accepted and rejected rows, so a reader can judge the filters by eye."""
    lines = [
        "",
        "## Contact sheet",
        "",
        "![contact sheet](contact_sheet.png)",
        "",
        "Top: accepted face crops (middle frame), a random sample of the corpus. Bottom: rejected "
        "segments with source, time, code and reason, one of each code first.",
        "",
        "## Accepted clips",
        "",
        "| key | source | start | end | sync offset | sync conf | blur | flags |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in head:
        conf = r.get("sync_confidence")
        blur = r.get("blur")
        lines.append(
            f"| {r['key']} | {Path(r['source']).name} | {r['start']:.2f} | {r['end']:.2f} | "
            f"{r.get('sync_offset')} | {'' if conf is None else f'{conf:.2f}'} | "
            f"{'' if blur is None else f'{blur:.1f}'} | {' '.join(r.get('flags', []))} |"
        )
    if stats["clips"] > len(head):
        lines.append(f"| ... {stats['clips'] - len(head)} more in manifest.jsonl | | | | | | | |")
    lines += ["", "## Rejects", "", "| source | start | end | code | reason |", "|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(
            f"| {Path(r['source']).name} | {r['start']:.2f} | {r['end']:.2f} | "
            f"{r.get('code') or r['stage']} | {r['reason'].replace('|', '/')} |"
        )
    total = sum(d["count"] for d in stats["rejects_by_code"].values())
    if total > len(rows):
        lines.append(f"| ... {total - len(rows)} more in rejects.jsonl | | | | |")
    return lines


def _sync_pass_lines(info: dict[str, Any]) -> list[str]:
    codes = ", ".join(f"{k} {v}" for k, v in sorted(info["by_code"].items())) or "none"
    return [
        "",
        "## Sync pass (SyncNet v2)",
        "",
        f"- weights `{info['weights']}` on `{info['device']}` ({info['precision']}), "
        f"batch {info['batch_size']} windows",
        f"- rule: reject |offset| > {info['max_offset_frames']} frames or confidence < "
        f"{info['min_confidence_syncnet']:g} (thresholds from "
        f"{(info.get('expert') or {}).get('calibration', 'the config; see avf_data/stages/sync.py')})",
        f"- clips judged: {info['kept'] + info['rejected']}, kept {info['kept']}, "
        f"rejected {info['rejected']} ({codes})",
        f"- SyncNet input: {info['inputs'].get('source', 0)} from source frames (reference geometry), "
        f"{info['inputs'].get('crop', 0)} from the 160 px training crop (no face boxes or source)",
        f"- last run: {info['clips_scored']} clips scored, {info['frames_scored']} frames, "
        f"{info['frames_per_second']} frames/s while scoring, {info['wall_seconds']} s wall",
    ]
