"""Human-readable report of a build: ``report.md`` plus ``contact_sheet.png``.

Written for the person deciding whether a corpus is fit to train on: what was kept, what was
thrown away and why (grouped by reason code), per input, and a picture of both.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

TILE = 120
CAPTION_LINES = 5
LINE = 11
WRAP = 22  # characters per caption line at the default bitmap font's width


def _pick_rejects(rejects: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rejects, one per reason code first so the sheet shows variety; rows without a
    thumbnail (decode rejects) are shown as text tiles."""
    chosen, seen = [], set()
    for r in rejects:
        code = r.get("code") or r["stage"]
        if code not in seen:
            chosen.append(r)
            seen.add(code)
    for r in rejects:
        if len(chosen) >= n:
            break
        if r not in chosen:
            chosen.append(r)
    return chosen[:n]


def contact_sheet(out: Path, accepted: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> Path:
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
                im = Image.open(out / item["thumb"]).convert("RGB")
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
    sheet.save(path)
    return path


def per_input(manifest: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kept and rejected seconds per source, with its largest reject code."""
    rows: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"kept": 0.0, "rejected": 0.0, "clips": 0, "codes": defaultdict(float)}
    )
    for r in manifest:
        d = rows[r["source"]]
        d["kept"] += r["seconds"]
        d["clips"] += 1
    for r in rejects:
        d = rows[r["source"]]
        d["rejected"] += r["seconds"]
        d["codes"][r.get("code") or r["stage"]] += r["seconds"]
    out = []
    for source, d in sorted(rows.items()):
        top = max(d["codes"].items(), key=lambda kv: kv[1])[0] if d["codes"] else ""
        out.append(
            {"source": source, "clips": d["clips"], "kept": d["kept"], "rejected": d["rejected"], "top_code": top}
        )
    return out


def write_report(
    out: Path, stats: dict[str, Any], manifest: list[dict[str, Any]], rejects: list[dict[str, Any]], cfg
) -> Path:
    from .build import sync_banner

    n = cfg.output.report_examples if cfg is not None else 12
    accepted = [r for r in manifest if r.get("thumb")][:n]
    contact_sheet(out, accepted, _pick_rejects(rejects, n))
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
    lines += [
        f"- pipeline: `{stats.get('pipeline_version')}`",
        f"- sync scorer: `{stats.get('sync_scorer')}`, enforced: **{stats.get('sync_enforced')}**",
        f"- inputs: {stats['inputs']} ({stats['inputs_rejected']} rejected whole, "
        f"{stats.get('inputs_vfr', 0)} variable frame rate), accepted clips: {stats['clips']}",
        f"- seconds: {stats['seconds_in']:.2f} in, {stats['seconds_accepted']:.2f} accepted, "
        f"{stats['seconds_rejected']:.2f} rejected",
        f"- last run: engine `{run.get('engine')}`, {run.get('workers')} workers, "
        f"{run.get('inputs_processed')} inputs processed ({run.get('inputs_skipped_resume')} already done), "
        f"{run.get('wall_seconds')} s wall, {run.get('frames_per_second')} frames/s "
        f"({run.get('frames_per_cpu_second')} per CPU-second of the workers)",
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
    lines += [
        "",
        "## Per input",
        "",
        "| source | clips | kept s | rejected s | main reject |",
        "|---|---:|---:|---:|---|",
    ]
    for r in per_input(manifest, rejects)[:500]:
        lines.append(
            f"| {Path(r['source']).name} | {r['clips']} | {r['kept']:.2f} | {r['rejected']:.2f} | {r['top_code']} |"
        )
    lines += [
        "",
        "## Contact sheet",
        "",
        "![contact sheet](contact_sheet.png)",
        "",
        "Top: accepted face crops (middle frame). Bottom: rejected segments with source, time, code and reason.",
        "",
        "## Accepted clips",
        "",
        "| key | source | start | end | sync offset | sync conf | blur | flags |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in manifest[:200]:
        conf = r.get("sync_confidence")
        blur = r.get("blur")
        lines.append(
            f"| {r['key']} | {Path(r['source']).name} | {r['start']:.2f} | {r['end']:.2f} | "
            f"{r.get('sync_offset')} | {'' if conf is None else f'{conf:.2f}'} | "
            f"{'' if blur is None else f'{blur:.1f}'} | {' '.join(r.get('flags', []))} |"
        )
    if len(manifest) > 200:
        lines.append(f"| ... {len(manifest) - 200} more in manifest.jsonl | | | | | | | |")
    lines += ["", "## Rejects", "", "| source | start | end | code | reason |", "|---|---:|---:|---|---|"]
    for r in rejects[:300]:
        lines.append(
            f"| {Path(r['source']).name} | {r['start']:.2f} | {r['end']:.2f} | "
            f"{r.get('code') or r['stage']} | {r['reason'].replace('|', '/')} |"
        )
    if len(rejects) > 300:
        lines.append(f"| ... {len(rejects) - 300} more in rejects.jsonl | | | | |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
