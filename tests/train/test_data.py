"""Transforms and the resumable stream: shapes, determinism, splitting, exact skip-ahead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avf_train.data import ClipStream, StreamState, count_samples, make_loader, resolve_shards
from avf_train.optim import CosineSchedule
from avf_train.transforms import ClipTransformConfig, make_view, multi_scale_crop


def _fake_clip(n=70, size=(120, 180)):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(n, *size, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(int(n / 25 * 16000))).astype(np.float32)
    return frames, audio


@pytest.mark.parametrize("mode", ["pretrain", "finetune", "test"])
def test_view_shapes_and_determinism(mode):
    frames, audio = _fake_clip()
    cfg = ClipTransformConfig(mode=mode)
    a = make_view(frames, 25.0, audio, 16000, cfg, np.random.default_rng(3), view=1)
    b = make_view(frames, 25.0, audio, 16000, cfg, np.random.default_rng(3), view=1)
    assert a["video"].shape == (3, 16, 160, 160) and a["audio"].shape == (1, 256, 128)
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])
    assert torch.isfinite(a["video"]).all() and torch.isfinite(a["audio"]).all()


def test_test_views_differ_across_segments_only():
    frames, audio = _fake_clip(n=140, size=(160, 160))
    cfg = ClipTransformConfig(mode="test")
    views = [make_view(frames, 25.0, audio, 16000, cfg, None, v)["video"] for v in range(4)]
    assert torch.equal(views[0], views[1])  # square clip: both crops coincide (official behaviour)
    assert not torch.equal(views[0], views[2])  # second temporal segment


def test_multi_scale_crop_output_size():
    x = torch.rand(4, 3, 160, 200)
    for seed in range(5):
        assert multi_scale_crop(x, 160, (1, 0.875, 0.75, 0.66), np.random.default_rng(seed)).shape == (4, 3, 160, 160)


def test_missing_shards_name_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_shards(str(tmp_path / "nowhere" / "*.tar"))


def _videomae_cosine(base, final, epochs, niter_per_ep, warmup_epochs, start_warmup_value):
    """VideoMAE utils.cosine_scheduler, as the official scripts call it (one value per step)."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    return np.concatenate((warmup, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))))


def test_cosine_schedule_equals_the_official_scheduler():
    s = CosineSchedule(peak=1.0, min_lr=0.01, warmup_steps=10, total_steps=110, warmup_lr=0.001)
    assert np.allclose([s(i) for i in range(110)], _videomae_cosine(1.0, 0.01, 11, 10, 1, 0.001))
    assert s(0) == 0.001 and s(9) == 1.0 and s(110) == pytest.approx(0.01)


def _keys(stream, n):
    out = []
    for batch in stream:
        out.append((tuple(batch["key"]), batch["pos"], batch["video"].sum().item()))
        if len(out) == n:
            return out
    return out


def test_eval_stream_sees_every_clip_once_in_each_split(shards):
    paths = resolve_shards(shards["unlabelled"])
    assert count_samples(paths) == 8
    cfg = ClipTransformConfig(mode="test", test_segments=1, test_crops=1, num_frames=4, image_size=32)
    seen = []
    for rank in range(3):  # 3 ranks x 1 worker > 2 shards: sample-level split
        stream = ClipStream(paths, cfg, 4, train=False, rank=rank, world_size=3)
        seen += [k for b in stream for k in b["key"]]
    assert sorted(seen) == [f"clip{i:03d}" for i in range(8)]


def test_eval_batch_size_counts_clips_with_all_their_views(shards):
    """--batch-size means clips in predict and at test time too: each batch holds whole clips."""
    paths = resolve_shards(shards["unlabelled"])
    cfg = ClipTransformConfig(mode="test", test_segments=2, test_crops=3, num_frames=4, image_size=32)
    batches = list(ClipStream(paths, cfg, 3, train=False))
    assert [len(b["key"]) for b in batches] == [18, 18, 12]  # 8 clips: 3 + 3 + 2, 6 views each
    first = batches[0]
    assert len(set(first["key"])) == 3 and sorted(first["view"].tolist()) == sorted(list(range(6)) * 3)


def test_train_stream_resumes_exactly_with_two_workers(shards):
    paths = resolve_shards(shards["unlabelled"])
    cfg = ClipTransformConfig(mode="pretrain", num_frames=4, image_size=32)
    kw = dict(train=True, seed=1, num_workers=2, shuffle_buffer=4)
    straight = _keys(make_loader(ClipStream(paths, cfg, 2, **kw), 2), 5)
    state = StreamState(num_workers=2, batch_size=2)
    for _, pos, _ in straight[:3]:  # what the trainer records for the first 3 batches
        state.advance(*pos)
    state = StreamState.from_dict(state.to_dict())
    rest = _keys(make_loader(ClipStream(paths, cfg, 2, state=state, **kw), 2), 2)
    assert straight[:3] + rest == straight  # worker roles rotated, each skipped to its next batch
    assert straight[4][1][1] == 1  # the fifth batch starts pass 1 (2 batches/pass/worker)


@pytest.mark.parametrize("batch_size, repeats", [(1, 1), (3, 2)])
def test_resume_seeks_to_the_cursor_and_equals_reading_through(shards, monkeypatch, batch_size, repeats):
    """Resuming after any batch gives the batches an uninterrupted run gives: from the cursor the
    last batch carried (reading only the shuffle buffer and what comes next), and from a
    checkpoint without cursors (positions found by running the shuffle on numbers alone)."""
    from avf_train import sample_order

    paths = resolve_shards(shards["unlabelled"])  # 8 clips in 2 shards
    cfg = ClipTransformConfig(mode="pretrain", num_frames=4, image_size=32)
    kw = dict(train=True, seed=3, num_workers=1, shuffle_buffer=4, repeats=repeats)
    n = 14

    def run(state=None, count=n):
        out = []
        for batch in ClipStream(paths, cfg, batch_size, state=state, **kw):
            out.append(batch)
            if len(out) == count:
                return out
        return out

    def seen(batches):
        return [(tuple(b["key"]), b["pos"], tuple(b["view"].tolist()), b["video"].sum().item()) for b in batches]

    straight = run()
    assert len({b["pos"][1] for b in straight}) >= 2  # the run crosses a pass boundary
    read = []
    for name in ("iter_raw_samples", "iter_shard_from"):  # count every sample the loader reads
        real = getattr(sample_order, name)

        def counting(*args, _real=real, **kwargs):
            for sample in _real(*args, **kwargs):
                read.append(sample["__key__"])
                yield sample

        monkeypatch.setattr(sample_order, name, counting)
    real_read = sample_order.read_shard_samples
    monkeypatch.setattr(
        sample_order, "read_shard_samples", lambda s, i: (read.extend(["buffered"] * len(i)), real_read(s, i))[1]
    )
    for k in range(1, n - 1):
        with_cursor, without = StreamState(num_workers=1, batch_size=batch_size), None
        without = StreamState(num_workers=1, batch_size=batch_size)
        for b in straight[:k]:
            with_cursor.advance(*b["pos"], b["cursor"])
            without.advance(*b["pos"])
        read.clear()
        resumed = run(StreamState.from_dict(with_cursor.to_dict()), 1)
        assert seen(resumed) == seen(straight[k : k + 1]), k
        assert len(read) <= 4 + batch_size + 1, (k, read)  # the buffer, the batch, one read ahead
        assert seen(run(without, n - k)) == seen(straight[k:]), k


def test_training_stream_skips_a_corrupt_sample(shards, tmp_path):
    from avf_data.shards import ShardWriter, iter_raw_samples

    raws = list(iter_raw_samples(resolve_shards(shards["unlabelled"])))[:3]
    raws[1] = {**raws[1], "mp4": b"not a video"}
    with ShardWriter(tmp_path, prefix="bad") as writer:
        for raw in raws:
            writer.write({k: v for k, v in raw.items() if k != "__url__"})
    cfg = ClipTransformConfig(mode="pretrain", num_frames=4, image_size=32)
    stream = ClipStream(resolve_shards(str(tmp_path)), cfg, 2, train=True, shuffle_buffer=1)
    batch = next(iter(stream))
    assert batch["key"] == [raws[0]["__key__"], raws[2]["__key__"]]


@pytest.fixture()
def http_root(shards):
    """The unlabelled test shards served by a local HTTP server (127.0.0.1, a free port)."""
    import functools
    import http.server
    import threading
    from pathlib import Path

    folder = Path(resolve_shards(shards["unlabelled"])[0]).parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_shards_stream_and_resume_exactly_like_local_ones(shards, http_root):
    local = resolve_shards(shards["unlabelled"])
    assert [p.rsplit("/", 1)[1] for p in local] == ["unlabelled-000000.tar", "unlabelled-000001.tar"]
    cfg = ClipTransformConfig(mode="pretrain", num_frames=4, image_size=32)
    kw = dict(train=True, seed=1, num_workers=2, shuffle_buffer=4)
    remote = resolve_shards(http_root + "/unlabelled-{000000..000001}.tar")
    assert remote == [f"{http_root}/unlabelled-00000{i}.tar" for i in range(2)] and count_samples(remote) == 8
    straight = _keys(make_loader(ClipStream(remote, cfg, 2, **kw), 2), 5)
    assert straight == _keys(make_loader(ClipStream(local, cfg, 2, **kw), 2), 5)
    state = StreamState(num_workers=2, batch_size=2)
    for _, pos, _ in straight[:3]:
        state.advance(*pos)
    rest = _keys(make_loader(ClipStream(remote, cfg, 2, state=state, **kw), 2), 2)
    assert straight[:3] + rest == straight
    piped = resolve_shards(",".join(f"pipe:cat {p}" for p in local))
    one = dict(train=True, seed=1, shuffle_buffer=4)
    assert _keys(ClipStream(piped, cfg, 2, **one), 3) == _keys(ClipStream(local, cfg, 2, **one), 3)
