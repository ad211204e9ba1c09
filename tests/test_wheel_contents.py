"""`pip install polymodal` from a wheel carries every module and every built-in model's files: the built-ins load
offline from package data, so a resource folder left out of the wheel breaks them only after an install."""

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked(under: str) -> set[str]:
    out = subprocess.run(["git", "ls-files", under], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")  # e.g. an unpacked sdist
    return set(out.stdout.split())


def test_the_wheel_holds_every_tracked_module_and_resource(tmp_path):
    # built from a copy of the tracked files: a checkout's polymodal.egg-info (from `pip install -e`) lists its
    # files in SOURCES.txt, and setuptools would take that list over pyproject's package-data
    wanted = {p for p in _tracked("polymodal") if "/__pycache__/" not in p}
    assert wanted, "no tracked files under polymodal/"
    source = tmp_path / "src"
    for rel in wanted | {"pyproject.toml", "README.md"}:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    # what running polymodal from a tree leaves: package data's resources/**/* matched it, and `pip wheel .` of a
    # used tree shipped it (stop 52; the sdist, and so `python -m build`, drops it through MANIFEST.in)
    for rel in ("polymodal/resources/__pycache__/__init__.cpython-311.pyc", "polymodal/__pycache__/cli.cpython-311.pyc"):
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(b"\x00" * 16)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                            "-w", str(tmp_path)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("polymodal-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not wanted - names, sorted(wanted - names)[:10]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert any(n.startswith("polymodal/resources/models/") for n in names)  # the built-ins' weights
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "polymodal = polymodal.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_sdist_holds_the_tests_with_their_conftest_and_the_files_they_read(tmp_path, monkeypatch):
    """An sdist is what distributions (conda-forge, Debian) build and test from: it had tests/test_*.py (setuptools'
    default) but not tests/conftest.py, nor the recipes, benchmarks and scripts some tests read."""
    from setuptools import build_meta

    wanted = {p for p in _tracked(".") if "/__pycache__/" not in p and not p.startswith(".")}
    source = tmp_path / "src"
    for rel in wanted:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    monkeypatch.chdir(source)  # build_meta builds the project in the working folder
    name = build_meta.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    expected = {p for p in wanted if p.split("/")[0] in ("tests", "recipes", "benchmarks", "scripts")}
    assert "tests/conftest.py" in expected
    assert not expected - names, sorted(expected - names)[:10]
