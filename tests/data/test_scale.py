"""Bookkeeping at corpus scale: the driver's memory does not grow with the number of inputs.

Two builds' bookkeeping, 2,000 and 20,000 inputs (``tools/bench/synthetic_build.py``: real log
lines, sparse shards), then in a fresh process each: a rerun of the finished build (finding the
inputs, resuming, writing every output and the report) and a resume from no checkpoint (the
whole log replayed). Their peak RSS must be the same up to a few MB; the bench
``tools/bench/scale.py`` does the same up to 1.36 M inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))
from synthetic_build import fake_build  # noqa: E402

PROBE = r"""
import json, sys
from pathlib import Path


def peak_rss_mb():
    # VmHWM, not ru_maxrss: the latter keeps the peak of the parent image this process was forked from
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


out, what, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if what == "rerun":
    from avf_data.build import build
    from avf_data.config import BuildConfig

    cfg = BuildConfig()
    cfg.output.thumbnails = False
    stats = build([str(out / "inputs.txt")], out, cfg, workers=1, progress=False)
    assert stats["run"]["inputs_skipped_resume"] == n and stats["inputs"] == n and stats["clips"] == 2 * n
    assert sum(1 for _ in open(out / "manifest.jsonl")) == 2 * n
else:
    from avf_data.store.build_store import BuildStore
    from avf_data.store.folder import OutputFolder

    (out / "state.json").unlink()
    store = BuildStore(OutputFolder(out), 512_000_000)
    recovery = store.open()
    assert len(store.done()) == n and recovery.replayed_lines > n / 16
print(json.dumps({"rss_mb": peak_rss_mb()}))
"""


def _peak(out: Path, what: str, n: int) -> float:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), what, str(n)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["rss_mb"]


@pytest.mark.slow
def test_driver_memory_does_not_grow_with_the_corpus(tmp_path):
    peaks: dict[str, list[float]] = {"rerun": [], "replay": []}
    sizes = (2_000, 20_000)
    for n in sizes:
        out = tmp_path / f"n{n}"
        fake_build(out, n, shard_mb=64)
        for what in peaks:
            peaks[what].append(_peak(out, what, n))
    for what, (small, large) in peaks.items():
        # 18,000 more inputs (36 MB more log): the large run may hold 17 bytes more per input
        assert large - small < 12, f"{what}: peak RSS {small:.0f} MB at {sizes[0]} inputs, {large:.0f} MB at {sizes[1]}"
