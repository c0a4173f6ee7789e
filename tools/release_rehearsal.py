"""Release rehearsal: install the four wheels as a pip user would, one role per fresh venv.

    python tools/release_rehearsal.py                       # all three roles
    python tools/release_rehearsal.py --roles curation --hide-libgl    # what .ci/run does
    python tools/release_rehearsal.py --torch-index URL     # a CPU-only torch (PyTorch's CPU wheel index)

It builds the wheels (``uv build --all-packages``), serves them as a PEP 503 index on
127.0.0.1, and for each role makes a venv with ``python -m venv``, installs with ``pip`` (not uv:
no override, no lock) from pip's configured index plus the local one, runs one real command
and prints the install's size:

    training    avf-train          1-step pre-training of the tiny model on synthetic shards
    curation    avf-data[curate]   avf-data build --demo (with --hide-libgl: libGL hidden from
                                   the process in a private mount namespace; needs root)
    prediction  avf-eval[predict]  avf-eval predict on a demo video with a random tiny model

and checks that a curation install holds exactly one OpenCV distribution, and the headless one.
Slow with the default (CUDA) torch: each role downloads or links ~4.5 GB. Exits 1 if a role fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("avf-data", "avf-models", "avf-train", "avf-eval")
ROLES = {"training": "avf-train", "curation": "avf-data[curate]", "prediction": "avf-eval[predict]"}

MAKE_SHARDS = """
import numpy as np, sys
from avf_data.shards import ClipSample, ShardWriter
rng = np.random.default_rng(0)
with ShardWriter(sys.argv[1], prefix="synthetic") as writer:
    for i in range(4):
        frames = rng.integers(0, 255, (20, 160, 160, 3), dtype=np.uint8)
        writer.write(ClipSample(key=f"clip{i}", frames=frames, audio=rng.normal(0, 0.1, 16000).astype(np.float32)))
"""

MAKE_CHECKPOINT = """
import sys
from avf_models import create_model
from avf_train import checkpoint, config
cfg = config.stage_defaults("finetune")
cfg.model.name = "tiny"
cfg.finetune.num_classes = 7
model = create_model("avfmae_pp_tiny", stage="finetune", num_classes=7)
payload = {"stage": "finetune", "model_name": "avfmae_pp_tiny", "model": model.state_dict(), "step": 1,
           "epoch": 1.0, "config": config.to_dict(cfg)}
checkpoint.save(sys.argv[1], 1, payload)
"""

ONE_CV2 = """
from importlib import metadata
dists = sorted({d.metadata["Name"] for d in metadata.distributions()
                if any(str(f).startswith("cv2/") for f in (d.files or []))})
print("cv2 distributions:", dists)
assert dists == ["opencv-python-headless"], dists
"""

NO_LIBGL = """
import ctypes
try:
    ctypes.CDLL("libGL.so.1")
except OSError:
    print("libGL.so.1: not loadable in this process")
else:
    raise SystemExit("libGL.so.1 still loads: hiding it failed")
"""


def build_wheels(out: Path) -> list[Path]:
    subprocess.run(["uv", "build", "--all-packages", "--wheel", "--out-dir", str(out)], cwd=ROOT, check=True)
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != len(PACKAGES):
        raise SystemExit(f"expected {len(PACKAGES)} wheels, got {[w.name for w in wheels]}")
    return wheels


def write_index(wheels: list[Path], root: Path) -> None:
    """A PEP 503 simple index: /simple/<name>/ lists that project's wheel."""
    for wheel in wheels:
        name = wheel.name.split("-")[0].replace("_", "-")
        folder = root / "simple" / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, folder / wheel.name)
        (folder / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/simple/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def run(cmd: list[str], **kw) -> None:
    print("  $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def hidden_libgl(cmd: list[str]) -> list[str]:
    """``cmd`` in a private mount namespace where every libGL on the loader's path is /dev/null."""
    libs = [line.split("=>")[-1].strip() for line in subprocess.run(
        ["ldconfig", "-p"], capture_output=True, text=True, check=True
    ).stdout.splitlines() if "libGL.so" in line]  # fmt: skip
    binds = "; ".join(f"mount --bind /dev/null {lib}" for lib in libs) or "true"
    script = f'{binds}; exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]


def rehearse(role: str, index: str, work: Path, python: str, torch_index: str | None, hide_libgl: bool) -> dict:
    venv = work / f"venv-{role}"
    run([python, "-m", "venv", str(venv)])
    py, bindir = str(venv / "bin" / "python"), venv / "bin"
    pip = [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--extra-index-url", index]
    if torch_index:
        pip += ["--extra-index-url", torch_index]
    t0 = time.perf_counter()
    run([*pip, ROLES[role]])
    install_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if role == "training":
        run([py, "-c", MAKE_SHARDS, str(work / "shards")])
        train = ["pretrain", "--data", str(work / "shards"), "--out", str(work / "run"), "--model", "tiny"]
        run([str(bindir / "avf-train"), *train, "--max-steps", "1", "--batch-size", "2", "--num-workers", "0"])
    elif role == "curation":
        run([py, "-c", ONE_CV2])
        build = [str(bindir / "avf-data"), "build", "--demo", "--out", str(work / "demo"), "--no-progress"]
        if hide_libgl:
            run(hidden_libgl([py, "-c", NO_LIBGL]))
            build = hidden_libgl(build)
        run(build)
    else:
        run([py, "-c", MAKE_CHECKPOINT, str(work / "tiny")])
        run([py, "-c", f"from avf_data.demo import make_demo_inputs; make_demo_inputs({str(work / 'videos')!r})"])
        run([str(bindir / "avf-eval"), "predict", str(work / "videos" / "single_face.mp4"), "--checkpoint",
             str(work / "tiny"), "--protocol", "dfew", "--device", "cpu"])  # fmt: skip
    site = next(venv.glob("lib/python*/site-packages"))
    torch_part = sum(size_of(site / d) for d in ("torch", "nvidia", "triton", "cusparselt") if (site / d).is_dir())
    return {"role": role, "install": ROLES[role], "size_gb": size_of(venv) / 1e9, "torch_gb": torch_part / 1e9,
            "install_s": install_s,
            "command_s": time.perf_counter() - t0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roles", default=",".join(ROLES), help="comma-separated: " + ", ".join(ROLES))
    parser.add_argument("--python", default=sys.executable, help="interpreter the venvs are made from")
    parser.add_argument("--torch-index", help="an extra index for torch, e.g. PyTorch's CPU wheel index")
    parser.add_argument("--hide-libgl", action="store_true", help="curation runs with libGL hidden (root)")
    parser.add_argument("--keep", action="store_true", help="keep the venvs and outputs (printed path)")
    args = parser.parse_args(argv)
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        parser.error(f"unknown roles {unknown}; known: {', '.join(ROLES)}")
    work = Path(tempfile.mkdtemp(prefix="avf-rehearsal-"))
    results, failed = [], []
    try:
        wheels = build_wheels(work / "dist")
        write_index(wheels, work / "index")
        server, index = serve(work / "index")
        print(f"local index {index} serving {', '.join(w.name for w in wheels)}")
        for role in roles:
            print(f"== {role}: pip install {ROLES[role]}", flush=True)
            try:
                results.append(rehearse(role, index, work / role, args.python, args.torch_index, args.hide_libgl))
            except subprocess.CalledProcessError as exc:
                failed.append(role)
                print(f"{role}: FAILED ({' '.join(map(str, exc.cmd))[:200]} exited {exc.returncode})")
        server.shutdown()
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| role | install | venv size | of which torch (+ CUDA libraries) | pip install | command | result |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['role']} | `{r['install']}` | {r['size_gb']:.2f} GB | {r['torch_gb']:.2f} GB | "
              f"{r['install_s']:.0f} s | {r['command_s']:.0f} s | ok |")  # fmt: skip
    for role in failed:
        print(f"| {role} | `{ROLES[role]}` | | | | | FAILED |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
