"""`pip install polymodal` from a wheel carries every module and every built-in model's files: the built-ins load
offline from package data, so a resource folder left out of the wheel breaks them only after an install."""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import polymodal

ROOT = Path(__file__).resolve().parents[1]


def _tracked(under: str) -> set[str]:
    out = subprocess.run(["git", "ls-files", under], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")  # e.g. an unpacked sdist
    return set(out.stdout.split())


def _make_dist(tmp_path: Path) -> Path:
    """`make dist` in a copy of the tracked files, left as a used working tree leaves them; returns its dist/."""
    source = tmp_path / "src"
    for rel in {p for p in _tracked(".") if "/__pycache__/" not in p}:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    leftovers = {
        # what running polymodal from a tree leaves: package data's resources/**/* matched it, and `pip wheel .` of a
        # used tree shipped it (stop 52)
        "polymodal/resources/__pycache__/__init__.cpython-311.pyc": b"\x00" * 16,
        "polymodal/__pycache__/cli.cpython-311.pyc": b"\x00" * 16,
        # an earlier `pip wheel .` of a module deleted since: setuptools reused build/lib and shipped it (stop 52)
        "build/lib/polymodal/deleted_since.py": b"X = 1\n",
        "dist/polymodal-0.0.1-py3-none-any.whl": b"an older release",
        ".venv/.installed": b"",  # .venv is made: `make dist` builds with this Python instead (PY= below)
        "demo-out/gallery.idx": b"x",
    }
    for rel, data in leftovers.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}  # under `make test`
    built = subprocess.run(["make", "dist", f"PY={sys.executable}"], cwd=source, env=env, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, (built.stdout + built.stderr)[-2000:]
    return source / "dist"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_dist_builds_the_sdist_and_from_it_a_wheel_of_every_tracked_module_and_resource(tmp_path):
    """One build for both (`make dist`: python -m build, the wheel from the unpacked sdist). The sdist is what
    distributions (conda-forge, Debian) build and test from: it had tests/test_*.py (setuptools' default) but not
    tests/conftest.py, nor the recipes, benchmarks and scripts some tests read."""
    dist = _make_dist(tmp_path)
    built = sorted(p.name for p in dist.iterdir())  # the older release's wheel is gone
    version = polymodal.__version__  # the wheel's name is the one README's install line gives
    assert built == [f"polymodal-{version}-py3-none-any.whl", f"polymodal-{version}.tar.gz"], built
    wheel, sdist = dist / built[0], dist / built[1]

    wanted = {p for p in _tracked("polymodal") if "/__pycache__/" not in p}
    assert wanted, "no tracked files under polymodal/"
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not wanted - names, sorted(wanted - names)[:10]
    assert "polymodal/deleted_since.py" not in names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert any(n.startswith("polymodal/resources/models/") for n in names)  # the built-ins' weights
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "polymodal = polymodal.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    tracked = {p for p in _tracked(".") if "/__pycache__/" not in p}
    with tarfile.open(sdist) as archive:
        in_sdist = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    expected = {p for p in tracked if p.split("/")[0] in ("tests", "recipes", "benchmarks", "scripts")}
    expected |= {"LICENSE", "Makefile", "MANIFEST.in", "pyproject.toml", "README.md"}
    expected |= {p for p in tracked if p.startswith("docs/")}  # README's pages, which the README tests read
    assert "tests/conftest.py" in expected
    assert not expected - in_sdist, sorted(expected - in_sdist)[:10]
    assert not {n for n in in_sdist if n.split("/")[0] in (".venv", "build", "dist", "demo-out")}
