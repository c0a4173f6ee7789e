"""Release hygiene: one version for the four packages, siblings pinned to it, a light core."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["avf-data", "avf-models", "avf-train", "avf-eval"]


def _pyproject(name: str) -> dict:
    return tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())


def _version(name: str) -> str:
    import importlib

    return importlib.import_module(name.replace("-", "_")).__version__


def test_one_version_and_sibling_pins():
    versions = {name: _version(name) for name in PACKAGES}
    assert len(set(versions.values())) == 1, versions
    version = versions["avf-data"]
    for name in PACKAGES:
        project = _pyproject(name)["project"]
        assert "version" in project.get("dynamic", []), name  # read from __init__.__version__
        reqs = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            reqs += extra
        for req in reqs:
            sibling = req.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip()
            if sibling in PACKAGES and sibling != name:
                assert f"=={version}" in req, (name, req)


def test_no_exact_third_party_pins_in_library_metadata():
    """The lock pins exact versions; wheels ask for compatible ranges, torch the same one everywhere,
    and nothing asks for torchaudio (whose compiled extension would tie torch to one build)."""
    torch_ranges = set()
    for name in PACKAGES:
        project = _pyproject(name)["project"]
        reqs = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            reqs += extra
        exact = [r for r in reqs if "==" in r and not r.startswith(tuple(PACKAGES))]
        assert not exact, (name, exact)
        assert not [r for r in reqs if r.startswith("torchaudio")], name
        torch_ranges |= {r.split("#")[0].strip() for r in reqs if r.startswith("torch>") or r.startswith("torch<")}
    assert len(torch_ranges) == 1, torch_ranges


def test_avf_data_core_has_no_curation_stack():
    core = _pyproject("avf-data")["project"]["dependencies"]
    names = {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in core}
    assert not names & {
        "dlib-bin",
        "onnxruntime",
        "scenedetect-headless",
        "librosa",
        "opencv-python-headless",
        "torch",
        "scikit-image",
    }, names


def test_long_descriptions_render_on_a_package_index():
    """A package README is its wheel's long description: no relative links, no pictures that do not ship."""
    for name in PACKAGES:
        text = (ROOT / "packages" / name / "README.md").read_text(encoding="utf-8")
        relative = re.findall(r"\]\((?!https?://)([^)]*)\)", text)
        assert not relative, (name, relative)
        assert "![" not in text and "<img" not in text, name
