"""Shards where a corpus lives: globs, braces, http(s), pipe: and fsspec URLs; counts from indices."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from avf_data import shards as S
from avf_data.shard_urls import expand_braces, split_list
from avf_data.shards import ClipSample, ShardWriter, expand_shards, iter_raw_samples, shard_counts


def _clip(key: str, frames: int = 6) -> ClipSample:
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    video = rng.integers(0, 255, (frames, 32, 32, 3), dtype=np.uint8)
    return ClipSample(key=key, frames=video, audio=np.zeros(frames * 640, np.float32), meta={"source": key})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A build-like folder: ``shards/part-00000{0,1,2}.tar`` holding 3, 3 and 1 clips."""
    root = tmp_path_factory.mktemp("corpus")
    with ShardWriter(root / "shards", prefix="part", max_count=3) as writer:
        for i in range(7):
            writer.write(_clip(f"c{i}"))
    return root


class _Server:
    """A local HTTP server over a folder that records the paths it was asked for."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                seen.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(corpus):
    srv = _Server(corpus)
    yield srv
    srv.close()


def _keys(urls) -> list[str]:
    return [s["__key__"] for s in iter_raw_samples(urls)]


def test_brace_patterns_and_lists_expand_like_webdataset(corpus):
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}/s-{8..10}.tar") == [
        "x/s-8.tar",
        "x/s-9.tar",
        "x/s-10.tar",
        "y/s-8.tar",
        "y/s-9.tar",
        "y/s-10.tar",
    ]
    assert expand_braces("{a,{b,c}}-{1..2}") == ["a-1", "a-2", "b-1", "b-2", "c-1", "c-2"]
    assert expand_braces("no braces {here") == ["no braces {here"]
    assert split_list("a/{0..1}.tar, b/{x,y}.tar,pipe:cat c.tar") == ["a/{0..1}.tar", "b/{x,y}.tar", "pipe:cat c.tar"]
    local = sorted(str(p) for p in (corpus / "shards").glob("*.tar"))
    assert expand_shards(str(corpus / "shards" / "part-{000000..000002}.tar")) == local
    assert expand_shards(str(corpus / "shards")) == local == expand_shards(str(corpus / "shards" / "*.tar"))
    assert expand_shards("file://" + str(corpus / "shards" / "*.tar")) == local  # file:// is a local path


def test_http_pipe_file_and_fsspec_shards_read_like_local_ones(corpus, server):
    local = expand_shards(str(corpus / "shards"))
    expected = _keys(local)
    assert expected == [f"c{i}" for i in range(7)]
    http_urls = expand_shards(server.url + "/shards/part-{000000..000002}.tar")
    assert len(http_urls) == 3 and _keys(http_urls) == expected
    assert _keys([f"pipe:cat {p}" for p in local]) == expected
    assert _keys(["file://" + p for p in local]) == expected
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    for p in local:
        mem.pipe(f"/avf-test/{os.path.basename(p)}", Path(p).read_bytes())
    try:
        urls = expand_shards("memory://avf-test/*.tar")
        assert [u.rsplit("/", 1)[1] for u in urls] == [os.path.basename(p) for p in local]
        assert _keys(urls) == expected
    finally:
        mem.rm("/avf-test", recursive=True)
    # metadata-only reads (the pre-flight scan) of a remote shard stream past the media
    meta = list(iter_raw_samples(http_urls[:1], exts=("json",)))
    assert [sorted(k for k in s if not k.startswith("__")) for s in meta] == [["json"]] * 3


def test_counts_come_from_the_index_without_reading_shards(corpus, server):
    index = json.loads((corpus / "shards" / "part-000000.idx.json").read_text())
    assert index["samples"] == 3 and index["bytes"] == (corpus / "shards" / "part-000000.tar").stat().st_size
    urls = expand_shards(server.url + "/shards/part-{000000..000002}.tar")
    assert shard_counts(urls) == [3, 3, 1]
    assert server.requests and all(r.endswith(".idx.json") for r in server.requests)  # no tar was fetched
    local = expand_shards(str(corpus / "shards"))
    assert shard_counts([f"pipe:cat {p}" for p in local]) == [3, 3, 1]  # pipe:cat x.idx.json


def test_counts_fall_back_to_the_manifest_then_to_reading(tmp_path, monkeypatch):
    build = tmp_path / "build"
    with ShardWriter(build / "shards", prefix="old", max_count=2) as writer:
        for i in range(3):
            writer.write(_clip(f"m{i}"))
    for idx in (build / "shards").glob("*.idx.json"):
        idx.unlink()  # a build from before the index existed
    rows = [{"key": f"m{i}", "shard": f"shards/old-00000{i // 2}.tar"} for i in range(3)]
    (build / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shards = expand_shards(str(build / "shards"))

    def no_reading(shard):
        raise AssertionError(f"read {shard}")

    with monkeypatch.context() as m:
        m.setattr(S, "_scan_count", no_reading)
        assert shard_counts(shards) == [2, 1]
    os.utime(shards[0], (1e10, 1e10))  # rewritten after the manifest: not trusted, read instead
    assert shard_counts(shards) == [2, 1]
    with ShardWriter(build / "shards", prefix="old", max_count=5) as writer:  # a stale index is noticed
        for i in range(4):
            writer.write(_clip(f"n{i}"))
    from avf_data.tars import ShardIndex, write_index

    write_index(shards[0], ShardIndex(samples=99, bytes=1))  # wrong size: not believed
    assert shard_counts(shards) == [4, 1]


def test_missing_and_failing_shards_name_themselves(corpus, server, tmp_path):
    with pytest.raises(FileNotFoundError, match="part-000009"):
        list(iter_raw_samples([server.url + "/shards/part-000009.tar"]))
    with pytest.raises(OSError, match=r"pipe:cat .*nowhere.tar exited with status 1"):
        list(iter_raw_samples([f"pipe:cat {tmp_path / 'nowhere.tar'}"]))
    with pytest.raises(FileNotFoundError, match="nothing-"):
        expand_shards(str(tmp_path / "nothing-{0..3}.tar"))
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar" * 100)
    with pytest.raises(OSError, match="bad.tar"):
        list(iter_raw_samples([str(bad)]))
