"""What `avf-data build` refuses before doing any work: typos, a folder it does not own, a
second build into the same folder, a production build without SyncNet weights."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def _main(args):
    from avf_data.cli import main

    return main(args)


def test_missing_input_path_is_a_usage_error(tmp_path, capsys):
    t0 = time.perf_counter()
    assert _main(["build", str(tmp_path / "no-such-dir"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"avf-data: error: input '{tmp_path / 'no-such-dir'}' does not exist"]
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "o").exists()


def test_require_syncnet_without_weights_fails_at_start(tmp_path, capsys, monkeypatch, demo_inputs):
    monkeypatch.delenv("AVF_SYNCNET_WEIGHTS", raising=False)
    assert _main(["build", str(demo_inputs["single_face"]), "--out", str(tmp_path / "o"), "--require-syncnet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avf-data: error: SyncNet is required") and "--syncnet-weights" in err[0]
    assert not (tmp_path / "o").exists()


def test_weights_from_environment_are_checked(tmp_path, capsys, monkeypatch, demo_inputs):
    bad = tmp_path / "syncnet_v2.model"
    bad.write_bytes(b"not a torch file")
    monkeypatch.setenv("AVF_SYNCNET_WEIGHTS", str(bad))
    assert _main(["build", str(demo_inputs["single_face"]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be loaded" in err[0] and str(bad) in err[0]


def test_foreign_files_in_out_survive(tmp_path, capsys, demo_inputs):
    out = tmp_path / "mine"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "my-precious-000000.tar").write_bytes(b"x")
    (out / "shards" / "notes.txt.tmp").write_bytes(b"y")
    (out / "manifest.jsonl").write_text("keep me\n")
    (out / "holiday.jpg").write_bytes(b"z")
    assert _main(["build", str(demo_inputs["single_face"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an avf-data output folder" in err[0]
    assert (out / "shards" / "my-precious-000000.tar").read_bytes() == b"x"
    assert (out / "shards" / "notes.txt.tmp").read_bytes() == b"y"
    assert (out / "manifest.jsonl").read_text() == "keep me\n"


def test_cleanup_only_touches_pipeline_names(tmp_path):
    """Inside an avf-data folder, a rerun removes its own leftovers, not other files."""
    from avf_data.store.build_store import BuildStore
    from avf_data.store.folder import claim

    folder = claim(tmp_path / "o")
    out = folder.root
    ours = [
        out / "segments" / "0123456789abcdef.tar",  # a segment no log line commits
        out / "shards" / "shard-000000.tar.part",  # a shard being filled that no pack line backs
        out / "shards" / "shard-000000.tar",  # a shard no seal line names
        out / "shards" / "shard-000000.idx.json",
    ]
    theirs = [
        out / "shards" / "my-precious-000000.tar",
        out / "shards" / "notes.txt.tmp",
        out / "shards" / "my-precious-000000.idx.json",
        out / "segments" / "notes.tar",
        out / "thumbs" / "holiday.jpg",
    ]
    for p in [*ours, *theirs]:
        p.write_bytes(b"x")
    recovery = BuildStore(folder, 1000).open()
    assert sorted(recovery.segments_removed + recovery.shard_files_removed) == sorted(
        [
            "0123456789abcdef.tar",
            "shards/shard-000000.tar.part",
            "shards/shard-000000.tar",
            "shards/shard-000000.idx.json",
        ]
    )
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


@pytest.mark.parametrize("out", ["", "file"])
def test_bad_out_is_a_usage_error(tmp_path, capsys, demo_inputs, out):
    if out == "file":
        out = str(tmp_path / "a-file")
        (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error for ""
        assert _main(["build", str(demo_inputs["single_face"]), "--out", out]) == 2
        raise SystemExit(2)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--out" in err[-1] and "error" in err[-1] and "Traceback" not in "".join(err)


def test_second_build_into_the_same_folder_is_refused(tmp_path, demo_inputs):
    """One build per output folder: the lock is held for the whole run and dropped at exit."""
    from avf_data.store.folder import FolderLock, OutputFolderError, claim

    out = claim(tmp_path / "o").root
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from avf_data.store.folder import FolderLock\n"
                "with FolderLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(30)"
            ),
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "avf_data.cli",
                "build",
                str(demo_inputs["single_face"]),
                "--out",
                str(out),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "another avf-data run (pid" in lines[0] and "Traceback" not in r.stderr
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(out):  # a killed holder leaves a stale file, not a stale lock
        with pytest.raises(OutputFolderError):
            with FolderLock(out):
                pass


def test_workers_must_not_be_negative(tmp_path, capsys, demo_inputs):
    assert _main(["build", str(demo_inputs["single_face"]), "--out", str(tmp_path / "o"), "--workers", "-1"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_a_folder_of_the_earlier_layout_is_refused(tmp_path, capsys, demo_inputs):
    """Layout 1 (done.jsonl, a shard set per task) cannot be continued by the size-packed store."""
    out = tmp_path / "old"
    (out / "shards").mkdir(parents=True)
    (out / ".avf-data").write_text('{"tool": "avf-data", "kind": "build"}\n')
    (out / "done.jsonl").write_text("{}\n")
    assert _main(["build", str(demo_inputs["single_face"]), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "earlier avf-data" in err[0] and "new folder" in err[0]
    assert sorted(p.name for p in out.iterdir()) == [".avf-data", "done.jsonl", "shards"]  # nothing written
