"""Helpers shared by the avf-eval tests: write synthetic predictions files."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def jsonl_writer(tmp_path: Path):
    def write(name: str, rows: Iterable[dict[str, Any]]) -> Path:
        return write_jsonl(tmp_path / name, rows)

    return write
