"""Decoding in a parent, then forking loader workers, must not deadlock (issue 14 item 8).

PyAV's default frame conversion runs a thread pool; a forked child inherits its state but not
its threads and waited forever in its first conversion. The script runs in a subprocess with a
timeout, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import io, sys
    import av
    import numpy as np
    from torch.utils.data import DataLoader, IterableDataset

    from avf_data.shards import ClipSample, decode_mp4, decode_sample

    rng = np.random.default_rng(0)
    samples = [ClipSample(key=f"k{i}", frames=rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
                          audio=np.zeros(5120, np.float32)).to_wds() for i in range(4)]

    class Clips(IterableDataset):
        def __iter__(self):
            for s in samples:
                yield decode_sample(s).frames.shape[0]

    def load(context):
        loader = DataLoader(Clips(), batch_size=None, num_workers=2, multiprocessing_context=context)
        return sorted(int(x) for x in loader)

    decode_mp4(samples[0]["mp4"])  # the reader, in the parent
    assert load("fork") == [8, 8, 8, 8, 8, 8, 8, 8]
    # other code in the parent converting frames the default (threaded) way
    with av.open(io.BytesIO(samples[1]["mp4"])) as c:
        [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    assert load("fork") == [8] * 8
    print("ok")
""")


def test_loader_workers_fork_after_a_decode_in_the_parent():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
