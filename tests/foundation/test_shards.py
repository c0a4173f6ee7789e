"""The shared sample format: what avf-data writes is exactly what avf-train/avf-eval read."""

import json
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds

from avf_data.shards import ClipSample, ShardWriter, decode_sample, expand_shards, iter_clips, iter_raw_samples


def _clip(key: str, label: int | None = None, frames: int = 20) -> ClipSample:
    rng = np.random.default_rng(len(key))
    video = np.repeat(rng.integers(0, 255, (1, 160, 160, 3), dtype=np.uint8), frames, axis=0)
    video[:, 40:80, 40:80] = np.arange(frames, dtype=np.uint8)[:, None, None, None] * 10
    audio = (0.3 * np.sin(np.arange(frames * 640) / 10)).astype(np.float32)
    return ClipSample(key=key, frames=video, audio=audio, meta={"source": f"/x/{key}.mp4"}, label=label)


def test_round_trip_and_rollover(tmp_path):
    with ShardWriter(tmp_path, max_count=2) as writer:
        for i in range(5):
            writer.write(_clip(f"clip{i}", label=i % 3))
    shards = expand_shards(str(tmp_path / "*.tar"))
    assert [p.rsplit("/", 1)[1] for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list(tmp_path.glob("*.tmp"))
    clips = list(iter_clips(tmp_path))
    assert [c.key for c in clips] == [f"clip{i}" for i in range(5)]
    first = clips[0]
    assert first.frames.shape == (20, 160, 160, 3) and first.fps == 25.0
    assert first.sample_rate == 16000 and first.audio.shape == (20 * 640,)
    assert first.label == 0 and first.meta["source"] == "/x/clip0.mp4"
    # lossy H.264, but the moving square must survive
    assert abs(int(first.frames[10, 60, 60, 0]) - 100) < 12


def test_webdataset_reads_our_shards(tmp_path):
    with ShardWriter(tmp_path) as writer:
        writer.write(_clip("a", label=2))
    samples = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False))
    assert len(samples) == 1 and samples[0]["cls"] == b"2"
    assert json.loads(samples[0]["json"])["label"] == 2
    assert decode_sample(samples[0]).label == 2


def test_unfinished_shard_is_invisible(tmp_path):
    writer = ShardWriter(tmp_path, max_count=10)
    writer.write(_clip("a"))
    assert list(tmp_path.glob("*.tar")) == []  # still a .tar.tmp until flushed
    writer.close()
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert sorted(tar.getnames()) == ["a.json", "a.mp4", "a.wav"]


def test_bad_keys_and_patterns_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="must not contain"):
        _clip("a.b").to_wds()
    with pytest.raises(FileNotFoundError, match="no shards"):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ValueError, match="lacks"):
        decode_sample({"__key__": "k", "json": b"{}"})


def test_every_shard_gets_its_index_when_it_appears(tmp_path):
    from avf_data.shards import shard_counts

    writer = ShardWriter(tmp_path / "deferred", max_count=2, defer_rename=True)
    for i in range(3):
        writer.write(_clip(f"d{i}", frames=4))
    writer.flush()
    assert not list((tmp_path / "deferred").glob("*.idx.json"))  # nothing final yet, no index
    writer.commit()
    shards = expand_shards(str(tmp_path / "deferred"))
    for shard, count in zip(shards, (2, 1), strict=False):
        index = json.loads(open(shard[: -len(".tar")] + ".idx.json").read())
        assert index["format"] == "avf-shard-index/2" and index["shard"] == shard.rsplit("/", 1)[1]
        assert (index["samples"], index["bytes"]) == (count, os.path.getsize(shard))
        assert index["extensions"] == {"json": count, "mp4": count, "wav": count}
        # the offsets find every sample with one seek: the same bytes a full read gives
        from avf_data.tars import read_local_index, read_sample_at

        parsed = read_local_index(shard)
        whole = list(iter_raw_samples([shard]))
        assert [read_sample_at(shard, parsed, i) for i in range(count)] == [
            {k: v for k, v in s.items() if k != "__url__"} for s in whole
        ]
    assert shard_counts(shards) == [2, 1]
    aborted = ShardWriter(tmp_path / "aborted", max_count=1, defer_rename=True)
    aborted.write(_clip("a", frames=4))
    aborted.abort()
    assert not list((tmp_path / "aborted").iterdir())


def test_readme_webdataset_example(tmp_path):
    """The avf-data README's reading example: stock WebDataset plus avf's decoder."""
    with ShardWriter(tmp_path, prefix="train", max_count=2) as writer:
        for i in range(3):
            writer.write(_clip(f"r{i}", label=i, frames=4))
    url = str(tmp_path / "train-{000000..000001}.tar")
    dataset = wds.WebDataset(url, shardshuffle=False).map(decode_sample)
    clips = list(dataset)
    assert [(c.key, c.label, c.frames.shape, c.sample_rate) for c in clips] == [
        (f"r{i}", i, (4, 160, 160, 3), 16000) for i in range(3)
    ]
