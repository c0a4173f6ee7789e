"""Suite-wide pytest setup: GPU tests skip cleanly on machines without CUDA (CI has none); the
``cpu_load`` fixture that the kill -9 tests of avf-data and avf-train share."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

# Tests start local Ray instances from a driver that `uv run` launched; Ray would then rebuild
# the uv environment for its workers (slow, and it needs the network). Use this interpreter.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@contextlib.contextmanager
def _busy_processes(n: int | None = None) -> Iterator[None]:
    """``n`` (default: one per core) busy processes for the duration: a child must notice its
    parent's death on a loaded machine too, where its watcher waits for a CPU and the GIL."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n or os.cpu_count() or 2)]
    try:
        yield
    finally:
        for b in burners:
            b.kill()
            b.wait()


@pytest.fixture
def cpu_load() -> Callable[..., contextlib.AbstractContextManager[None]]:
    """``with cpu_load():`` keeps every core busy inside the block."""
    return _busy_processes
