"""Inputs that used to hang, vanish or crash the driver: FIFOs, truncated files, symlinks,
empty or unreadable folders, broken configs, an unreachable Ray cluster, `inspect` misuse."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest


def read_jsonl(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _clip(tmp_path, canvas, name="a.mp4", seconds=1.2):
    from avf_data.demo import write_av

    frames = np.repeat(canvas((160, 96), head=60)[None], int(seconds * 25), axis=0)
    tone = (0.2 * np.sin(np.arange(int(seconds * 16000)) / 16000 * 2 * np.pi * 200)).astype(np.float32)
    return write_av(tmp_path / name, frames, tone)


def _run_cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "avf_data.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_fifo_is_rejected_without_hanging(tmp_path, canvas):
    """A FIFO named *.mp4, in a list and in a folder: a reject row each, no hang."""
    from avf_data.build import build

    src = tmp_path / "in"
    src.mkdir()
    os.mkfifo(src / "pipe.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{src / 'pipe.mp4'}\n{_clip(tmp_path, canvas)}\n")
    t0 = time.perf_counter()
    build([str(listing), str(src)], tmp_path / "out", workers=1, progress=False)
    assert time.perf_counter() - t0 < 120
    rows = [r for r in read_jsonl(tmp_path / "out" / "rejects.jsonl") if r["source"].endswith("pipe.mp4")]
    assert len(rows) == 1 and rows[0]["code"] == "decode.not_a_file"  # listed twice, kept once


def test_truncated_file_is_fully_accounted(tmp_path, canvas, mux_audio):
    """Index at the front (faststart), most of the data cut off: the container's 5 s are the
    input's length and the undecodable tail is a decode.truncated row."""
    import av

    from avf_data.pipeline import process_input

    frames = np.repeat(canvas((160, 96), head=60)[None], 125, axis=0)
    frames[:, :, :, 0] = np.linspace(0, 255, 125, dtype=np.uint8)[:, None, None]  # not a still picture
    path = tmp_path / "full.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 160, 96, "yuv420p"
        a_s = c.add_stream("aac", rate=16000)
        a_s.layout = "mono"
        for img in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        mux_audio(c, a_s, 0.2 * np.sin(np.arange(5 * 16000) / 16000 * 2 * np.pi * 200), 16000)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 4])
    r = process_input(str(cut), __import__("avf_data.config", fromlist=["x"]).BuildConfig())
    assert r["seconds"] == pytest.approx(5.0, abs=0.05)
    rows = sorted(r["manifest"] + r["rejects"], key=lambda x: x["start"])
    assert rows[0]["start"] == 0.0 and rows[-1]["end"] == pytest.approx(r["seconds"])
    assert sum(x["seconds"] for x in rows) == pytest.approx(r["seconds"], abs=1e-6)
    tail = [x for x in r["rejects"] if x["code"] == "decode.truncated"]
    assert len(tail) == 1 and tail[0]["end"] == pytest.approx(5.0, abs=0.05) and tail[0]["seconds"] > 2.5


def test_symlink_is_deduplicated(tmp_path, canvas):
    from avf_data.inputs import resolve_inputs

    real = _clip(tmp_path, canvas)
    os.symlink(real, tmp_path / "link.mp4")
    notes: list[str] = []
    got = resolve_inputs([str(real), str(tmp_path / "link.mp4"), os.path.relpath(real)], notes)
    assert got == [str(real)] and os.path.isabs(got[0])
    assert len(notes) == 1 and "same file" in notes[0]


def test_empty_and_unreadable_folders_are_reported(tmp_path, canvas, capsys):
    from avf_data.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "x.mp4").mkdir()
    assert main(["build", str(tmp_path / "empty"), str(tmp_path / "x.mp4"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no inputs to curate" in err[0] and "no video files" in err[0]
    assert "folder named like a video" in err[0]


def test_unreadable_subfolder_is_noted(tmp_path, canvas):
    from avf_data.inputs import resolve_inputs

    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    (tmp_path / "in" / "locked").mkdir(parents=True)
    _clip(tmp_path / "in", canvas)
    os.chmod(tmp_path / "in" / "locked", 0)
    try:
        notes: list[str] = []
        assert len(resolve_inputs([str(tmp_path / "in")], notes)) == 1
        assert any("locked" in n and "skipped" in n for n in notes)
    finally:
        os.chmod(tmp_path / "in" / "locked", 0o755)


def test_zero_byte_file_is_rejected_without_a_worker_pool(tmp_path):
    from avf_data.build import build

    (tmp_path / "empty.mp4").write_bytes(b"")
    t0 = time.perf_counter()
    stats = build([str(tmp_path / "empty.mp4")], tmp_path / "o", workers=2, progress=False)
    assert time.perf_counter() - t0 < 10
    assert stats["rejects_by_code"] == {"decode.empty": {"count": 1, "seconds": 0.0}}


@pytest.mark.parametrize(
    "content, message",
    [
        ("crop: {out_size: 96\n", "YAML syntax error at line"),
        ("- crop\n- scene\n", "top level must be a mapping"),
        ("crop:\n  outsize: 96\n", "unknown config key 'crop.outsize'"),
        ("sync:\n  mode: sometimes\n", "sync.mode' must be one of off, measure, enforce"),
        (None, "is a folder"),
    ],
)
def test_bad_config_is_one_line(tmp_path, capsys, canvas, content, message):
    from avf_data.cli import main

    cfg = tmp_path / "c.yaml"
    if content is None:
        cfg.mkdir()
    else:
        cfg.write_text(content)
    clip = _clip(tmp_path, canvas)
    assert main(["build", str(clip), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avf-data: error: ") and message in err[0], err


def test_unreachable_ray_address_fails_fast(tmp_path, canvas):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    r = _run_cli(
        "build",
        str(_clip(tmp_path, canvas)),
        "--out",
        str(tmp_path / "o"),
        "--engine",
        "ray",
        "--ray-address",
        f"127.0.0.1:{port}",
        "--no-progress",
        timeout=120,
    )
    assert r.returncode == 2 and time.perf_counter() - t0 < 60
    lines = [x for x in r.stderr.strip().splitlines() if "error" in x]
    assert len(lines) == 1 and "no Ray cluster answers there" in lines[0] and "Traceback" not in r.stderr


def test_inspect_errors(tmp_path, capsys):
    from avf_data.cli import main

    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    bogus = tmp_path / "x.tar"
    bogus.write_bytes(b"not a tar at all" * 100)
    assert main(["inspect", str(bogus)]) == 2
    assert "is not a tar shard" in capsys.readouterr().err


def test_disk_full_is_one_line(tmp_path, demo_inputs, capsys, monkeypatch):
    """ENOSPC while writing shards stops the run with one line; a rerun resumes."""
    import errno

    from avf_data import tars
    from avf_data.cli import main

    real_write = tars.SampleTarWriter.write

    def full(self, sample):
        raise OSError(errno.ENOSPC, "No space left on device", getattr(self.fh, "name", "?"))

    monkeypatch.setattr(tars.SampleTarWriter, "write", full)
    clip = demo_inputs["single_face"]
    assert main(["build", str(clip), "--out", str(tmp_path / "o"), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "run the same command again" in err[-1]
    monkeypatch.setattr(tars.SampleTarWriter, "write", real_write)
    assert main(["build", str(clip), "--out", str(tmp_path / "o"), "--workers", "0", "--no-progress"]) == 0


def test_rotated_phone_clip_is_kept_upright(tmp_path, demo_media, mux_audio):
    """A talking face stored sideways with a 90-degree display matrix (as phones record
    portrait video) is curated like the upright original: the face filter finds it."""
    import av

    from avf_data.config import BuildConfig
    from avf_data.pipeline import curate_video

    m = demo_media("single_face")
    frames, audio = m.frames[:100], m.audio[: 100 * 640]
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.height, vs.width = frames.shape[2], frames.shape[1]  # stored sideways
        vs.pix_fmt = "yuv420p"
        vs.set_display_rotation(90)
        a_s = c.add_stream("pcm_s16le", rate=16000)
        a_s.layout = "mono"
        for img in frames:
            stored = np.ascontiguousarray(np.rot90(img, -1))
            for p in vs.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        mux_audio(c, a_s, audio, 16000)
    clips, rejects = curate_video(path, BuildConfig())
    assert clips, rejects
    assert clips[0].meta["source_size"] == [frames.shape[2], frames.shape[1]]
    assert not [r for r in rejects if r["stage"] in ("face", "crop")]
