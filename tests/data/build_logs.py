"""Reading a build folder's JSONL files in tests (a module of its own: several test files use it)."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def task_lines(out: Path) -> list[dict]:
    """The ``task`` lines of a build folder's log (one per finished task)."""
    return [line for line in read_jsonl(Path(out) / "build.jsonl") if line.get("kind") == "task"]


def input_records(out: Path):
    """Every finished input's record in a build folder's log."""
    for line in task_lines(out):
        yield from line["inputs"]


def assert_ray_address_refused(result, took: float) -> None:
    """A command given a Ray address where nothing answers: one line naming the flag, exit 2,
    in under 10 s."""
    assert result.returncode == 2 and took < 10, (took, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avf-data: error: --ray-address"), lines
    assert "no Ray cluster answers" in lines[0]
