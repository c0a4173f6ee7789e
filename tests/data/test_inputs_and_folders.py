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
from build_logs import assert_ray_address_refused


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


def test_unreadable_subfolder_is_noted(tmp_path, canvas, monkeypatch):
    """A folder the listing cannot read is skipped with a note, the rest is curated. Root
    reads every folder whatever its mode (CI runs as root), so the listing itself is made to
    refuse; as another user a real chmod 0 is checked too."""
    import errno

    from avf_data import inputs

    (tmp_path / "in" / "locked").mkdir(parents=True)
    _clip(tmp_path / "in", canvas)
    _clip(tmp_path / "in" / "locked", canvas, name="hidden_by_mode.mp4")
    real_scandir = os.scandir

    def refusing(path):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_scandir(path)

    with monkeypatch.context() as m:
        m.setattr(inputs.os, "scandir", refusing)
        notes: list[str] = []
        assert [os.path.basename(p) for p in inputs.resolve_inputs([str(tmp_path / "in")], notes)] == ["a.mp4"]
        assert notes == [f"{tmp_path / 'in' / 'locked'}: folder skipped (Permission denied)"]
    if os.geteuid() != 0:  # the real thing, where the mode is enforced
        os.chmod(tmp_path / "in" / "locked", 0)
        try:
            notes = []
            assert len(inputs.resolve_inputs([str(tmp_path / "in")], notes)) == 1
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


@pytest.mark.parametrize("listener", ["closed port", "silent listener"])
def test_unreachable_ray_address_fails_fast(tmp_path, canvas, listener):
    """Nothing at the address, or something that accepts TCP but is no Ray GCS: one line,
    exit 2, in under 10 s all told (ray.init would retry for 20 s and more)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if listener == "silent listener":
            s.listen()  # the kernel accepts connections; nobody ever answers on them
        else:
            s.close()  # a port nobody listens on
        clip = _clip(tmp_path, canvas)
        t0 = time.perf_counter()
        r = _run_cli(
            "build", str(clip), "--out", str(tmp_path / "o"), "--engine", "ray",
            "--ray-address", f"127.0.0.1:{port}", "--no-progress", timeout=60,
        )  # fmt: skip
        took = time.perf_counter() - t0
    assert_ray_address_refused(r, took)
    assert not (tmp_path / "o").exists()


def test_inspect_errors(tmp_path, capsys):
    from avf_data.cli import main

    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    bogus = tmp_path / "x.tar"
    bogus.write_bytes(b"not a tar at all" * 100)
    assert main(["inspect", str(bogus)]) == 2
    assert "not a tar file" in capsys.readouterr().err


def _member(fh, name: str, data: bytes, claimed: int | None = None) -> None:
    """A tar member written by hand: its header may claim more bytes than follow (``claimed``)."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data) if claimed is None else claimed
    fh.write(info.tobuf(tarfile.PAX_FORMAT))
    fh.write(data + bytes(-len(data) % 512))


def _hostile(kind: str, root) -> tuple[object, str]:
    """A hostile input for `inspect`, made on the spot (no GB written: headers only promise
    them); returns its path and the words its one error line must hold."""
    path = root / "shard-000000.tar"
    if kind == "folder without shards":
        (root / "notes.txt").write_text("no shards here\n")
        return root, "holds no avf shards"
    if kind == "not a tar":
        path.write_bytes(np.random.default_rng(1).bytes(10_000))
        return path, "not a tar file"
    with open(path, "wb") as fh:
        if kind == "8 GB member":  # a sample's json, then an mp4 header promising 8 GiB over 4 kB
            _member(fh, "clip_0000.json", b'{"start": 0.0}')
            _member(fh, "clip_0000.mp4", b"\0" * 4096, claimed=8 << 30)
            return path, "member 'clip_0000.mp4' claims 8589934592 bytes, more than the 1024 MiB"
        if kind == "1.2 GB json":  # refused by its header's size: never read, never parsed
            _member(fh, "clip_0000.json", b'{"pad": "' + b"x" * 100_000, claimed=1_200_000_000)
            return path, "member 'clip_0000.json' claims 1200000000 bytes, more than the 16 MiB"
        if kind == "truncated member":  # under the limits, but the file ends inside it
            _member(fh, "clip_0000.json", b'{"start": 0.0}')
            _member(fh, "clip_0000.mp4", b"\0" * 4096, claimed=100 << 20)
            return path, "member 'clip_0000.mp4' claims 104857600 bytes but the file ends 4096 bytes into it"
        _member(fh, "img_0000.jpg", b"\xff\xd8" * 100)  # a tar, but of something else
        fh.write(bytes(1024))
        return path, "not an avf shard"


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize(
    "kind", ["8 GB member", "1.2 GB json", "truncated member", "not a tar", "not avf", "folder without shards"]
)
def test_inspect_refuses_hostile_shards_in_one_line(tmp_path, kind, verify):
    """Each hostile input: one line naming the shard (and the member at fault), exit 2, and
    memory bounded whatever a header promises (a member's size is checked before reading)."""
    target, words = _hostile(kind, tmp_path)
    probe = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(r.returncode)\n"
    )
    extra = ["--verify"] if verify else []
    r = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "avf_data.cli", "inspect", str(target), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    *lines, peak_kib = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("avf-data: error: ") and str(target) in lines[0] and words in lines[0], lines
    assert int(peak_kib) < 400_000  # KiB: the interpreter and the reader, no member's promise


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
