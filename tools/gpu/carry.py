"""The wheels that travel to the GPU machine, and how they are installed there.

The GPU machine reaches no package index; its Python 3.12 already holds torch, torchaudio,
einops, numpy, pyyaml, tqdm, scipy, OpenCV, scikit-image and tensorboard, but not PyAV,
soundfile (and its cffi), webdataset or xformers, nor this project. ``prepare.py`` puts those
wheels into ``.gpu-wheels/`` (git-ignored, named in the device call's ``carry``); ``run.py``
installs, with ``--no-index``, only the ones whose module the machine cannot import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import REPO

WHEEL_DIR = REPO / ".gpu-wheels"
MANIFEST = "manifest.json"
BUDGET_MIB = 64.0  # what one device call carries: working tree + carried paths
SITE = Path("/tmp/avf-gpu-site")  # --target of the install on the GPU machine

# Third-party distributions the sections import (or that avf-train declares), with the module
# that shows whether the machine has them; versions come from uv.lock, so the GPU machine runs
# what CI tests. av: demo clips and shards (encode and decode); soundfile: the demo speech and
# the shards' wav; cffi and pycparser: soundfile's needs, absent there; webdataset and
# braceexpand: avf-train's declared dependency (its code reads tars itself); xformers: the
# attention section and the models' "auto" backend.
THIRD_PARTY: dict[str, str] = {
    "av": "av",
    "soundfile": "soundfile",
    "cffi": "_cffi_backend",
    "pycparser": "pycparser",
    "webdataset": "webdataset",
    "braceexpand": "braceexpand",
    "xformers": "xformers",
}
OPTIONAL = ("xformers",)  # dropped (and said so) when it would not fit the carry budget
PROJECT: dict[str, str] = {
    "avf_data": "avf_data",
    "avf_models": "avf_models",
    "avf_train": "avf_train",
    "avf_eval": "avf_eval",
}
SOURCE_DIRS = [REPO / "packages" / p / "src" for p in ("avf-data", "avf-models", "avf-train", "avf-eval")]


def source_digest() -> str:
    """A hash of the four packages' source trees: a project wheel built from other sources than
    the checkout's is stale, and the run then uses the checkout instead."""
    h = hashlib.sha256()
    for root in SOURCE_DIRS:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(REPO)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


def dist_name(wheel: Path) -> str:
    """``soundfile-0.14.0-py2.py3-none-manylinux_2_28_x86_64.whl`` -> ``soundfile``."""
    return wheel.name.split("-")[0].lower()


def read_manifest(folder: Path = WHEEL_DIR) -> dict[str, Any]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_missing(folder: Path = WHEEL_DIR, target: Path = SITE) -> dict[str, Any]:
    """Install the carried wheels whose module this Python lacks into ``target`` (no index, no
    dependencies: the set is complete by construction). Project wheels are used only when they
    were built from this checkout's sources; otherwise the sections import the checkout.

    Returns what happened, for the results file; the caller puts ``target`` (and, when needed,
    the source trees) on ``PYTHONPATH``.
    """
    manifest = read_manifest(folder)
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    fresh = bool(manifest) and manifest.get("source_digest") == source_digest()
    report: dict[str, Any] = {
        "wheel_dir": str(folder),
        "wheels": [w.name for w in wheels],
        "xformers_note": manifest.get("xformers_note"),
        "project_wheels_fresh": fresh,
        "installed": [],
        "present": [],
    }
    wanted = []
    for wheel in wheels:
        name = dist_name(wheel)
        module = THIRD_PARTY.get(name) or PROJECT.get(name)
        if module is None:
            continue
        if name in PROJECT and not fresh:
            continue  # stale project wheels: the checkout's sources are used instead
        if has_module(module) and name not in PROJECT:
            report["present"].append(name)
            continue
        wanted.append(wheel)
    if wanted:
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        cmd += ["--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wanted)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            report["error"] = (proc.stderr or proc.stdout).strip()[-800:]
        else:
            report["installed"] = [dist_name(w) for w in wanted]
    report["project_from"] = "wheels" if any(name in PROJECT for name in report["installed"]) else "checkout"
    return report


def python_path(report: dict[str, Any], target: Path = SITE) -> list[str]:
    """``PYTHONPATH`` entries for the sections: the install target, then (unless the project's
    own wheels were installed) the checkout's package sources."""
    entries = [str(target)] if report.get("installed") else []
    if report.get("project_from") != "wheels":
        entries += [str(d) for d in SOURCE_DIRS]
    return entries
