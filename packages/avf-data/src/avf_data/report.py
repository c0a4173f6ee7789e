"""Human-readable report of a build: ``report.md`` plus ``contact_sheet.png``."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

TILE = 96
CAPTION = 34


def _pick_rejects(rejects: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rejects with thumbnails, one per stage first so the sheet shows variety."""
    with_thumb = [r for r in rejects if r.get("thumb")]
    chosen, seen = [], set()
    for r in with_thumb:
        if r["stage"] not in seen:
            chosen.append(r)
            seen.add(r["stage"])
    for r in with_thumb:
        if len(chosen) >= n:
            break
        if r not in chosen:
            chosen.append(r)
    return chosen[:n]


def contact_sheet(out: Path, accepted: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> Path:
    from PIL import Image, ImageDraw, ImageFont

    cols = 6
    font = ImageFont.load_default()

    def rows(items):
        return max(1, -(-len(items) // cols))

    header = 22
    h = header * 2 + (rows(accepted) + rows(rejected)) * (TILE + CAPTION) + 10
    sheet = Image.new("RGB", (cols * (TILE + 8) + 8, h), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    y = 4

    def section(title, items, colour, caption):
        nonlocal y
        draw.text((8, y), title, fill=(0, 0, 0), font=font)
        y += header
        if not items:
            draw.text((8, y + 10), "(none)", fill=(120, 120, 120), font=font)
        for i, item in enumerate(items):
            x = 8 + (i % cols) * (TILE + 8)
            yy = y + (i // cols) * (TILE + CAPTION)
            try:
                im = Image.open(out / item["thumb"]).convert("RGB")
                im.thumbnail((TILE, TILE))
                sheet.paste(im, (x + (TILE - im.width) // 2, yy + (TILE - im.height) // 2))
            except Exception:
                draw.rectangle([x, yy, x + TILE, yy + TILE], outline=(200, 200, 200))
            draw.rectangle([x - 1, yy - 1, x + TILE, yy + TILE], outline=colour)
            for k, line in enumerate(textwrap.wrap(caption(item), 17)[:3]):
                draw.text((x, yy + TILE + 1 + 10 * k), line, fill=(40, 40, 40), font=font)
        y += rows(items) * (TILE + CAPTION)

    section(f"Accepted clips ({len(accepted)} shown)", accepted, (0, 150, 0),
            lambda r: f"{Path(r['source']).name} {r['start']:.1f}-{r['end']:.1f}s")
    section(f"Rejected examples ({len(rejected)} shown)", rejected, (200, 0, 0),
            lambda r: f"{r['stage']}: {r['reason']}")
    path = out / "contact_sheet.png"
    sheet.save(path)
    return path


def write_report(out: Path, stats: dict[str, Any], manifest: list[dict[str, Any]],
                 rejects: list[dict[str, Any]], cfg) -> Path:
    n = cfg.output.report_examples if cfg is not None else 12
    accepted = [r for r in manifest if r.get("thumb")][:n]
    rej = _pick_rejects(rejects, n)
    contact_sheet(out, accepted, rej)
    run = stats.get("run", {})
    lines = [
        "# avf-data curation report", "",
        f"- pipeline: `{stats.get('pipeline_version')}`",
        f"- **sync scorer: `{stats.get('sync_scorer')}`**"
        + (" (weight-free fallback; pass `--syncnet-weights` for SyncNet)"
           if "fallback" in str(stats.get("sync_scorer")) else ""),
        f"- inputs: {stats['inputs']} ({stats['inputs_rejected']} rejected whole), "
        f"accepted clips: {stats['clips']}",
        f"- seconds: {stats['seconds_in']:.2f} in, {stats['seconds_accepted']:.2f} accepted, "
        f"{stats['seconds_rejected']:.2f} rejected",
        f"- last run: engine `{run.get('engine')}`, {run.get('workers')} workers, "
        f"{run.get('inputs_processed')} inputs processed ({run.get('inputs_skipped_resume')} already done), "
        f"{run.get('wall_seconds')} s wall, {run.get('frames_per_second')} frames/s "
        f"({run.get('frames_per_second_per_core')} per worker incl. start-up; "
        f"{run.get('frames_per_worker_second')} per busy worker-second)", "",
        "## Stages", "",
        "| stage | in | out | seconds in | seconds out |", "|---|---:|---:|---:|---:|",
    ]
    for name, d in stats["stages"].items():
        lines.append(f"| {name} | {d['in']} | {d['out']} | {d['seconds_in']:.2f} | {d['seconds_out']:.2f} |")
    lines += ["", "## Reject reasons", "", "| stage: reason | count |", "|---|---:|"]
    for reason, count in stats["rejects_by_reason"].items():
        lines.append(f"| {reason} | {count} |")
    lines += ["", "## Contact sheet", "", "![contact sheet](contact_sheet.png)", "",
              "Top: accepted face crops (middle frame). Bottom: rejected segments with stage and reason.", "",
              "## Accepted clips", "", "| key | source | start | end | sync offset | sync conf | blur |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in manifest[:200]:
        conf = r.get("sync_confidence")
        blur = r.get("blur")
        lines.append(f"| {r['key']} | {Path(r['source']).name} | {r['start']:.2f} | {r['end']:.2f} | "
                     f"{r.get('sync_offset')} | {'' if conf is None else f'{conf:.2f}'} | "
                     f"{'' if blur is None else f'{blur:.1f}'} |")
    if len(manifest) > 200:
        lines.append(f"| ... {len(manifest) - 200} more in manifest.jsonl | | | | | | |")
    lines += ["", "## Rejects", "", "| source | start | end | stage | reason |", "|---|---:|---:|---|---|"]
    for r in rejects[:300]:
        lines.append(f"| {Path(r['source']).name} | {r['start']:.2f} | {r['end']:.2f} | {r['stage']} | "
                     f"{r['reason'].replace('|', '/')} |")
    if len(rejects) > 300:
        lines.append(f"| ... {len(rejects) - 300} more in rejects.jsonl | | | | |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
