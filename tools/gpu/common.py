"""What every section of ``tools/gpu/run.py`` shares: the results file, section arguments, timing
and the sizes of the real and the dry run.

Each section runs in its own process (an OOM or a crash ends that section only), so the sections
talk to the orchestrator through one file: every measurement is one JSON line appended to
``OUT/results.jsonl`` as soon as it exists, which keeps what a section measured even when it is
killed later for its time.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = "results.jsonl"
REPORT = "results.md"
LOG = "run.log"

# Models the step benchmark runs (in this order of importance) and their short names in tables.
MODELS: dict[str, str] = {
    "avfmae_pp_base": "Base",
    "avfmae_pp_large": "Large",
    "avfmae_pp_huge": "Huge",
    "hicmae_base": "HiCMAE-B",
    "avfmae_pp_tiny": "tiny",
}
BATCHES = (32, 164)

# Official code on one H100, fp16, clips/s (the figures; ranges as (low, high)).
OFFICIAL: dict[tuple[str, int], tuple[float, float]] = {
    ("avfmae_pp_base", 32): (76.0, 89.0),
    ("avfmae_pp_large", 32): (61.0, 61.0),
    ("avfmae_pp_huge", 32): (59.0, 59.0),
    ("avfmae_pp_base", 164): (345.0, 369.0),
    ("hicmae_base", 32): (178.0, 191.0),
    ("hicmae_base", 164): (569.0, 569.0),
}
GOAL_BASE_X_OFFICIAL_32 = 3.0  # Base at batch 32 >= 3x the official figure (its upper end)
GOAL_BASE_164 = 550.0  # clips/s
GOAL_BASE_X_HICMAE = 1.07
GOAL_SYNCNET_FPS = 5000.0  # frames/s
GOAL_E2E_X_STEP = 0.9


def model_overrides(name: str, dry_run: bool) -> dict[str, Any]:
    """Config overrides for ``create_model``: the dry run shrinks HiCMAE-B to the tiny model's
    widths (the baseline's code path, ViT encoders and CSBlock fusion, in seconds on a CPU; there
    is no tiny HiCMAE config in the registry); everything else is built as registered."""
    if not (dry_run and name == "hicmae_base"):
        return {}
    from avf_models.config import TINY_WIDTHS

    return dict(TINY_WIDTHS)


def append_record(out: Path, record: dict[str, Any]) -> None:
    """One JSON line per measurement, appended and flushed at once (a later kill keeps it)."""
    line = json.dumps(record, sort_keys=True, default=str)
    with open(out / RESULTS, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
    print(f"[{record.get('section')}] {line}", flush=True)


def read_records(out: Path) -> list[dict[str, Any]]:
    """Every record so far; a torn last line (a section killed mid-write) is skipped."""
    path = out / RESULTS
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def section_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The arguments every section takes (``--out``, ``--dry-run``, ``--device``) plus its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, required=True, help="folder holding results.jsonl")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (CI)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --dry-run")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (demo inputs and shards)")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    if args.device is None:
        args.device = "cpu" if args.dry_run else "cuda"
    return args


def run_section(name: str, body: Callable[[], None], out: Path, config: dict[str, Any] | None = None) -> int:
    """Run a section's body; an out-of-memory error becomes a record (status ``oom``), any other
    error a record (status ``error``) and exit status 1, so the orchestrator can tell both apart."""
    import torch

    try:
        body()
    except torch.OutOfMemoryError as exc:
        append_record(out, {"section": name, **(config or {}), "status": "oom", "error": str(exc).splitlines()[0]})
        return 0
    except Exception as exc:
        traceback.print_exc()
        append_record(
            out,
            {"section": name, **(config or {}), "status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]},
        )
        return 1
    return 0


def guard_attention(device: str) -> str | None:
    """Under the "auto" backend on CUDA with xformers importable, run one small xformers forward
    and backward; if it fails, switch the process to SDPA and return the error (else ``None``).

    An importable xformers whose kernels do not run here (built for another CUDA or torch) would
    otherwise fail every model call that "auto" sends to it.
    """
    import torch

    from avf_models import attention

    if attention.get_backend() != "auto" or attention.resolve_backend(torch.device(device)) != "xformers":
        return None
    try:
        q, k, v = (torch.randn(2, 16, 4, 64, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in "qkv")
        attention.attention(q, k, v).float().sum().backward()
        sync(device)
    except Exception as exc:
        attention.set_backend("sdpa")
        return f"xformers failed, SDPA used: {type(exc).__name__}: {exc}"[:300]
    return None


def sync(device: str) -> None:
    """Wait for the GPU (timings on CUDA are meaningless without it)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def peak_memory_gib(device: str) -> float:
    """Peak device memory allocated by torch on CUDA; the process's peak RSS on the CPU (each
    configuration has its own process, so the figure is that configuration's)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def timed_calls(fn: Callable[[], object], calls: int, device: str) -> tuple[list[float], float]:
    """Run ``fn`` ``calls`` times: per-call milliseconds and the total wall seconds.

    On CUDA each call is bracketed by events and nothing waits between calls, so the GPU queue
    stays full as in training (a per-call synchronise would add the launch gap to every step);
    the per-call figures are read after one synchronise at the end.
    """
    import torch

    if device.startswith("cuda"):
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        return [s.elapsed_time(e) for s, e in events], wall
    ms = []
    t0 = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1e3)
    return ms, time.perf_counter() - t0


def ms_stats(ms: list[float]) -> dict[str, float]:
    """Median, min and max of per-call milliseconds, rounded for the table."""
    return {
        "ms_median": round(statistics.median(ms), 3),
        "ms_min": round(min(ms), 3),
        "ms_max": round(max(ms), 3),
    }


@contextmanager
def phase(label: str) -> Iterator[None]:
    """Print how long a phase took (to the run log), so a slow section shows where time went."""
    t = time.perf_counter()
    yield
    print(f"  {label}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
