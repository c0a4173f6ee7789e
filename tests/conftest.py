"""Suite-wide pytest setup: GPU tests skip cleanly on machines without CUDA (CI has none)."""

import os

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
