"""User errors end in one ``avf-train: error:`` line and exit status 2, found before any loader
worker starts; and loader workers do not outlive a trainer killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_args import ONE_CPU, TINY_MODEL

from avf_train.cli import main

FAST = [*TINY_MODEL, *ONE_CPU, "--max-steps", "1"]


def _refused(capsys, args: list[str]) -> str:
    capsys.readouterr()
    started = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - started < 20  # found before training, not at the first step
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("avf-train: error: "), lines
    return lines[0]


def _refused_run(capsys, command: str, data: str, out: Path, *extra: str) -> str:
    """``_refused`` for a tiny training run: ``command --data DATA --out OUT`` + FAST + ``extra``."""
    return _refused(capsys, [command, "--data", data, "--out", str(out), *FAST, *extra])


def _exit_code(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # argparse refusing the command line
        return int(exc.code)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["pretrain", "--data", "missing/*.tar", "--out", "run"], "missing/*.tar"),
        (["pretrain", "--data", "missing/*.tar", "--out", "run", "--set", "nope.x=1"], "unknown config key 'nope'"),
        (["pretrain", "--out", "run", "--config", "nope"], "neither a file nor a shipped config"),
        (["finetune", "--out", "run", "--config", "pretrain_base"], "is for stage 'pretrain', not 'finetune'"),
        (["postpretrain", "--out", "run", "--task", "dea"], "invalid choice: 'dea'"),
        (["finetune", "--init", "missing.pt", "--data", "missing/*.tar", "--out", "run"], "missing"),
        (
            ["predict", "--checkpoint", "missing.pt", "--data", "x/*.tar", "--out", "p"],
            "checkpoint missing.pt does not exist",
        ),
        (
            ["predict", "--checkpoint", "missing.pt", "--data", "x/*.tar", "--out", "p", "--set", "run.seed=1"],
            "predict takes --set data.FIELD=VALUE only",
        ),
        (["predict", "--data", "x/*.tar", "--out", "p"], "arguments are required: --checkpoint"),
        (["pretrain", "--batch-size", "many"], "invalid int value: 'many'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, words, tmp_path, monkeypatch, capsys):
    """The CLI contract of every avf command: unknown input -> one line `avf-train: error: ...`, status 2."""
    monkeypatch.chdir(tmp_path)
    assert _exit_code(args) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("avf-train: error: ") and words in lines[0], lines
    assert not (tmp_path / "run").exists() and not (tmp_path / "p").exists()


def test_too_few_clips_for_the_batch_is_found_before_the_workers_start(shards, tmp_path, capsys):
    # 8 clips in 2 shards of 4; 2 workers read one shard each: 4 clips per stream per pass
    line = _refused_run(
        capsys, "pretrain", shards["unlabelled"], tmp_path / "a", "--batch-size", "8", "--num-workers", "2"
    )
    assert "8 clips in 2 shard(s)" in line and "--batch-size 8 on 2 loader worker(s) x 1 process(es)" in line
    assert "smallest gets 4 clips" in line
    # pairs that work together: the workers kept with a smaller batch, or the batch kept with one
    # worker (which reads both shards: 8 clips)
    assert "use --batch-size 4 --num-workers 2 or --batch-size 8 --num-workers 1" in line


def test_batch_fit_rule_is_the_loaders_worst_pass():
    from avf_train.preflight import stream_clips

    assert stream_clips([4, 4], 2) == 4 and stream_clips([4, 4], 1) == 8
    # 9 shards on 8 streams: some stream reads a single shard, in the worst pass the 3-clip one
    assert stream_clips([1000] * 8 + [3], 8) == 3
    assert stream_clips([10, 3], 4) == 3  # fewer shards than streams: clips dealt round-robin


def test_unlabelled_shards_for_a_labelled_stage(shards, tmp_path, capsys):
    line = _refused_run(
        capsys, "finetune", shards["unlabelled"], tmp_path / "a", "--num-classes", "3", "--batch-size", "2"
    )
    assert "8 of 8 clips have no label" in line and "avf-data import" in line


def test_labels_outside_the_label_map(shards, tmp_path, capsys):
    # the labelled fixture holds labels 0, 1 and 2
    line = _refused_run(
        capsys, "finetune", shards["labelled"], tmp_path / "a", "--num-classes", "2", "--batch-size", "2"
    )
    assert "outside the label map of 2 classes" in line and "label 2 in" in line
    # a named label map that lacks some of the clips' names
    two = tmp_path / "two.yaml"
    two.write_text("classes: [Happy, Sadness]\naliases: {happiness: Happy}\n")
    line = _refused_run(
        capsys, "finetune", shards["labelled"], tmp_path / "b", "--set", f"data.label_map={two}", "--batch-size", "2"
    )
    assert "outside the label map 'two'" in line and "'Angry'" in line


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_init_and_ckpt(shards, tmp_path, capsys, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    line = _refused_run(
        capsys,
        "finetune",
        shards["labelled"],
        tmp_path / "a",
        "--init",
        str(bad),
        "--num-classes",
        "3",
        "--batch-size",
        "2",
    )
    assert f"cannot read checkpoint {bad}" in line
    line = _refused(
        capsys, ["predict", "--checkpoint", str(bad), "--data", shards["labelled"], "--out", str(tmp_path / "p")]
    )
    assert f"cannot read checkpoint {bad}" in line


def test_device_cuda_without_cuda_is_one_line(shards, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = _refused_run(
        capsys, "pretrain", shards["unlabelled"], tmp_path / "a", "--batch-size", "2", "--device", "cuda"
    )
    assert "no CUDA device" in line


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_loader_workers_exit_when_the_trainer_is_killed(shards, tmp_path, cpu_load):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "avf_train.cli",
        "pretrain",
        "--data",
        shards["unlabelled"],
        "--out",
        str(run),
        "--model",
        "tiny",
        "--batch-size",
        "2",
        "--num-workers",
        "2",
        "--precision",
        "fp32",
        "--epochs",
        "1000",
        "--set",
        "run.tensorboard=false",
        "--set",
        "run.log_every=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        workers: set[int] = set()
        for line in proc.stdout:  # wait for a logged step: the workers are up and serving batches
            if " step 1/" in line:
                workers = _descendants(proc.pid)
                break
        assert len(workers) >= 2, "no loader workers found"  # forkserver + 2 workers
        with cpu_load():  # the goal holds on a busy machine too
            os.kill(proc.pid, signal.SIGKILL)  # not reaped yet: a zombie trainer counts as gone
            killed = time.monotonic()
            while time.monotonic() - killed < 2.0 and any(_alive(p) for p in workers):
                time.sleep(0.02)
            left = [p for p in workers if _alive(p)]
        assert not left, f"loader processes outlived the trainer by 2 s: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pid in workers | _descendants(proc.pid):  # clean up only what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- hostile inputs (#22)


def _rewrite(pattern: str, dst: Path, edit) -> str:
    """Copies of the fixture's shards (no index) with every member passed through
    ``edit(key, ext, data)``; None drops the member. Returns the copies' glob."""
    import glob
    import io
    import tarfile

    dst.mkdir(parents=True, exist_ok=True)
    for src in sorted(glob.glob(pattern)):
        with tarfile.open(src) as tin, tarfile.open(dst / Path(src).name, "w") as tout:
            for member in tin:
                key, _, ext = member.name.partition(".")
                data = edit(key, ext, tin.extractfile(member).read())
                if data is not None:
                    info = tarfile.TarInfo(member.name)
                    info.size = len(data)
                    tout.addfile(info, io.BytesIO(data))
    return str(dst / "*.tar")


def _edit_meta(change, drop_cls: bool = True):
    """An ``edit`` for :func:`_rewrite` that applies ``change(meta)`` to every clip's json."""
    import json

    def edit(key: str, ext: str, data: bytes) -> bytes | None:
        if ext == "json":
            meta = json.loads(data)
            change(meta)
            return json.dumps(meta).encode()
        return None if ext == "cls" and drop_cls else data

    return edit


def test_pipe_shards_from_a_config_file_need_the_command_lines_consent(shards, tmp_path, capsys):
    import glob

    import yaml

    shard = sorted(glob.glob(shards["unlabelled"]))[0]
    marker = tmp_path / "marker"
    spec = f"pipe:touch {marker}; cat {shard}"
    config, out = tmp_path / "received.yaml", tmp_path / "run"
    args = ["pretrain", "--config", str(config), "--out", str(out), *FAST, "--batch-size", "2"]
    for data in ({"shards": spec}, {"shards": spec, "allow_pipe": True}):  # a file cannot opt itself in
        config.write_text(yaml.safe_dump({"data": data}))
        line = _refused(capsys, args)
        assert "runs a shell command (pipe:)" in line and "--set data.allow_pipe=true" in line
        assert not marker.exists() and not out.exists()  # refused before anything ran the command
    assert main([*args, "--set", "data.allow_pipe=true"]) == 0 and marker.exists()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["allow_pipe"] is True and saved["data"]["shards"] == spec  # the consent, recorded
    marker.unlink()
    resume = ["pretrain", "--out", str(out), "--resume", *FAST[:-1], "2", "--batch-size", "2"]
    assert main(resume) == 0 and marker.exists()  # a resume honours what its run recorded
    saved["data"]["allow_pipe"] = False  # a RUN/config.yaml without the record is a config file like any other
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    marker.unlink()
    assert "RUN/config.yaml runs a shell command" in _refused(capsys, resume) and not marker.exists()


def test_pipe_shards_on_the_command_line_are_the_users_own(tmp_path):
    from avf_train.config import resolve

    config = tmp_path / "c.yaml"
    config.write_text("data: {shards: '{x.tar,pipe:touch m}'}\n")  # brace expansion yields a pipe: too
    with pytest.raises(ValueError, match="pipe:"):
        resolve("pretrain", config=str(config))
    assert resolve("pretrain", flags={"data.shards": "pipe:cat a.tar"}).data.allow_pipe
    assert resolve("pretrain", sets=["data.shards=pipe:cat a.tar"]).data.allow_pipe
    assert resolve("pretrain", config=str(config), flags={"data.shards": "x/*.tar"}).data.allow_pipe is False
    opted = resolve("pretrain", config=str(config), sets=["data.allow_pipe=true"])
    assert opted.data.allow_pipe and opted.data.shards.startswith("{x.tar,")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.update(label=float("nan")), "has json 'label' nan: a label is an integer class index"),
        (lambda m: m.update(label=1.5), "has json 'label' 1.5"),  # int() would make it class 1
        (lambda m: m.update(label="two"), "has json 'label' 'two'"),
        (lambda m: m.update(label=True), "has json 'label' True"),
        (lambda m: m.update(label_name="Happy\x1b[2J\n"), "label name 'Happy\\x1b[2J\\n' with control characters"),
        (lambda m: m.update(classes=["Happy", "Sad\u202e", "Angry"]), "with control characters"),
    ],
)
def test_malformed_labels_are_one_line_and_nothing_is_written(shards, tmp_path, capsys, change, words):
    data = _rewrite(shards["labelled"], tmp_path / "bad", _edit_meta(change))
    out = tmp_path / "run"
    line = _refused_run(capsys, "finetune", data, out, "--num-classes", "3", "--batch-size", "2")
    assert words in line and "clip 'clip000' in " in line, line
    assert not out.exists()


def test_a_cls_member_that_is_not_an_integer(shards, tmp_path, capsys):
    def edit(key: str, ext: str, data: bytes) -> bytes | None:
        if ext == "json":
            return _edit_meta(lambda m: m.pop("label", None))(key, ext, data)
        return "²".encode() if ext == "cls" else data  # str.isdigit() is true for it, int() fails

    data = _rewrite(shards["labelled"], tmp_path / "bad", edit)
    line = _refused_run(capsys, "finetune", data, tmp_path / "run", "--num-classes", "3", "--batch-size", "2")
    assert "has .cls '²'" in line and not (tmp_path / "run").exists()


def test_pretraining_ignores_malformed_labels(shards, tmp_path):
    """Pre-training uses no label, so a NaN one neither crashes a loader worker nor stops the run."""
    data = _rewrite(shards["labelled"], tmp_path / "nan", _edit_meta(lambda m: m.update(label=float("nan"))))
    assert main(["pretrain", "--data", data, "--out", str(tmp_path / "run"), *FAST, "--batch-size", "2"]) == 0


def test_shards_without_json_members_say_so(shards, tmp_path, capsys):
    data = _rewrite(shards["unlabelled"], tmp_path / "plain", lambda k, e, d: None if e == "json" else d)
    line = _refused_run(capsys, "pretrain", data, tmp_path / "run", "--batch-size", "2")
    assert "has no .json members: not avf-data shards? (members: .mp4 .wav)" in line, line
    assert "too few clips" not in line and not (tmp_path / "run").exists()


def _out_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """--out values that cannot hold a run, each with the words its refusal must contain."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"\xff\xd8")
    cases = {
        "under a file": (a_file / "run", "is under"),
        "a file": (a_file, "is a file"),
        "a folder of other files": (other, "is a folder of other files (holiday.jpg), not a run"),
    }
    if Path("/proc/self").is_dir():  # a file system that takes no new folders, even for root
        cases["read-only"] = (Path("/proc/avf-train-run"), "cannot write --out /proc/avf-train-run")
    return cases


@pytest.mark.parametrize("case", ["under a file", "a file", "a folder of other files", "read-only"])
def test_out_that_cannot_hold_a_run(shards, tmp_path, capsys, case):
    cases = _out_cases(tmp_path)
    if case not in cases:
        pytest.skip("no /proc on this system")
    out, words = cases[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    line = _refused_run(capsys, "pretrain", shards["unlabelled"], out, "--batch-size", "2")
    assert words in line, line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert not Path("/proc/avf-train-run").exists()


def test_val_data_with_the_same_classes_in_another_order(shards, tmp_path, capsys):
    """The silent mismatch the label map exists to stop: the same names, numbered differently."""
    train = _rewrite(
        shards["labelled"], tmp_path / "train", _edit_meta(lambda m: m.update(classes=["Happy", "Sad", "Angry"]), False)
    )
    val = _rewrite(
        shards["labelled"], tmp_path / "val", _edit_meta(lambda m: m.update(classes=["Angry", "Sad", "Happy"]), False)
    )
    out = tmp_path / "run"
    line = _refused_run(capsys, "finetune", train, out, "--val-data", val, "--batch-size", "2")
    assert "number classes as ['Happy', 'Sad', 'Angry']" in line
    assert "--val-data as ['Angry', 'Sad', 'Happy']" in line and not out.exists()


def test_too_few_clips_names_a_batch_and_worker_count_that_work_together():
    from avf_train.preflight import batch_fixes

    assert batch_fixes([4, 4], 8, 1, 2) == [(4, 2), (8, 1)]
    # 2 clips on 4 workers: three streams get nothing, so no batch works on 4; one worker reads both
    assert batch_fixes([1, 1], 2, 1, 4) == [(2, 1)]
    assert batch_fixes([3], 4, 1, 2) == [(1, 2)]  # keeping the batch needs more clips than there are
    assert batch_fixes([3], 4, 8, 2) == []  # 8 processes, 3 clips: only more clips or fewer processes help


def test_loader_workers_default_to_what_the_process_may_use(monkeypatch, tmp_path):
    import yaml

    from avf_train import config
    from avf_train.config import ConfigError, loader_workers, resolve

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cpus, workers in ((1, 1), (2, 1), (3, 2), (5, 4), (16, 4)):
        monkeypatch.setattr(config, "available_cpus", lambda cpus=cpus: cpus)
        assert loader_workers("auto") == workers
    monkeypatch.setattr(config, "available_cpus", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two ranks share the node's 8 CPUs
    assert loader_workers("auto") == 3 and loader_workers(3) == 3
    cfg = resolve("pretrain")  # the default is auto, resolved once into the number the run records
    assert cfg.data.num_workers == 3
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"data": {"num_workers": "auto"}}))
    assert resolve("pretrain", config=str(config_file)).data.num_workers == 3
    with pytest.raises(ConfigError, match="data.num_workers"):
        resolve("pretrain", sets=["data.num_workers=-1"])
    monkeypatch.undo()
    assert 1 <= config.available_cpus() <= (os.cpu_count() or 1)
