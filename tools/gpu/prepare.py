"""Gather the wheels the GPU machine lacks into ``.gpu-wheels/`` and check they fit one device call.

    uv run python tools/gpu/prepare.py            # then: device run, carry [".gpu-wheels"]

The GPU machine reaches no package index, and one device call carries at most 64 MiB: the
working tree plus the carried folders. This downloads the third-party wheels of ``carry.py``
(cp312, manylinux x86_64, no dependencies, at the versions of ``uv.lock``), builds the
project's four wheels, prints every size with the total and exits 1 if the total is over the
budget. xformers is optional: when it alone breaks the budget it is left out, and the manifest
says so, which the attention section then reports.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from carry import BUDGET_MIB, MANIFEST, OPTIONAL, THIRD_PARTY, WHEEL_DIR, dist_name, source_digest
from common import REPO

PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
MIB = 2**20


def locked_versions(names: list[str]) -> dict[str, str]:
    """The versions uv.lock pins (CI tests those; the GPU run should import the same)."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    found = {p["name"].lower(): p["version"] for p in lock.get("package", []) if "version" in p}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"prepare: {missing} not in uv.lock; add them to the lock or to carry.THIRD_PARTY")
    return {n: found[n] for n in names}


def find_pip() -> list[str]:
    """A pip to download with: this Python's, else the first python3 on PATH that has one (the
    project's uv environment has none; the platform flags make the downloader's version moot)."""
    for exe in (sys.executable, shutil.which("python3"), shutil.which("python")):
        if exe and subprocess.run([exe, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return [exe, "-m", "pip"]
    raise SystemExit("prepare: no pip found (python3 -m pip); install pip for any Python 3")


def download(pip: list[str], name: str, version: str, dest: Path) -> None:
    cmd = [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    cmd += ["--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd.append(f"{name}=={version}")
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(
            f"prepare: pip could not download {name}=={version} for cp312 manylinux x86_64 "
            "(no route to PyPI, or no such wheel: see pip's message above)"
        )


def build_project(dest: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("prepare: uv not found (it builds the project's wheels); python3 -m pip install uv")
    cmd = [uv, "build", "--quiet", "--all-packages", "--wheel", "--out-dir", str(dest)]
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise SystemExit("prepare: uv build failed (its message is above)")


def tree_bytes() -> int:
    """What the device call sends besides the carried paths: tracked files and untracked files
    git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for name in filter(None, out.decode().split("\0")):
        path = REPO / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=WHEEL_DIR, help="wheel folder (default .gpu-wheels, git-ignored)")
    ap.add_argument("--budget-mib", type=float, default=BUDGET_MIB)
    args = ap.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    pip = find_pip()
    for name, version in locked_versions(list(THIRD_PARTY)).items():
        download(pip, name, version, out)
    build_project(out)

    wheels = {w.name: w.stat().st_size for w in sorted(out.glob("*.whl"))}
    tree = tree_bytes()
    total = tree + sum(wheels.values())
    budget = args.budget_mib * MIB
    note = None
    if total > budget:
        for wheel in [w for w in wheels if dist_name(Path(w)) in OPTIONAL]:
            size = wheels.pop(wheel)
            (out / wheel).unlink()
            total -= size
            note = (
                f"{dist_name(Path(wheel))} not carried ({(total + size) / MIB:.1f} MiB with it > {args.budget_mib:g})"
            )
    width = max(len(w) for w in wheels) if wheels else 10
    print(f"{'file':<{width}}  {'MiB':>7}")
    for wheel, size in wheels.items():
        print(f"{wheel:<{width}}  {size / MIB:7.2f}")
    print(f"{'(working tree that travels)':<{width}}  {tree / MIB:7.2f}")
    print(f"{'total':<{width}}  {total / MIB:7.2f}  (budget {args.budget_mib:g} MiB)")
    if note:
        print(note)
    manifest = {
        "wheels": wheels,
        "tree_bytes": tree,
        "total_bytes": total,
        "budget_mib": args.budget_mib,
        "source_digest": source_digest(),
        "xformers_note": note or "xformers carried",
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if total > budget:
        print(
            f"prepare: {total / MIB:.1f} MiB > {args.budget_mib:g} MiB: the device call would be refused",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
