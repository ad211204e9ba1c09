"""`make wheelhouse` and README's "Installing without network" (stop 53, helper airgap). Only make's dry run: the real
wheelhouse is ~500 MB of downloads, checked by hand (an offline install from it into a fresh venv, report of stop 53)."""
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pip_downloads(*args):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    done = subprocess.run(["make", "-n", "--no-print-directory", "wheelhouse", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if " -m pip download " in line]
    assert len(steps) == 2, done.stdout  # torch alone, then polymodal's wheel with everything else
    return steps


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_wheelhouse_takes_torch_from_the_cpu_index_alone_then_pins_that_file():
    pin = next(dep for dep in _project()["dependencies"] if dep.startswith("torch=="))
    torch_step, rest = _pip_downloads()
    words = shlex.split(torch_step)
    # --index-url, not --extra-index-url: with PyPI beside it, an unreachable CPU index meant PyPI's CUDA build
    assert words[words.index("--index-url") + 1] == CPU_INDEX and "--extra-index-url" not in words
    assert pin in words and "--no-deps" in words
    # the second step names the saved torch file, so no other torch build can be picked for polymodal's pin
    assert "wheelhouse/torch-*.whl" in rest and "$(ls dist/*.whl)[" in rest
    for step in (torch_step, rest):  # wheels only (nothing to build offline), all into the one folder
        assert "--only-binary=:all:" in step and "-d wheelhouse" in step


def test_target_args_reach_both_downloads():
    for step in _pip_downloads("TARGET_ARGS=--python-version 3.12"):
        assert "--python-version 3.12" in step


def test_readme_offline_install_line_matches_the_makefile():
    rest = _pip_downloads()[1]
    extras = re.search(r"dist/\*\.whl\)\[([^\]]+)\]", rest).group(1)
    assert set(extras.split(",")) <= set(_project()["optional-dependencies"])
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Installing without network", 1)[1].split("\n## ", 1)[0]
    assert "make wheelhouse" in section
    install = re.search(r"pip install --no-index --find-links wheelhouse '([^']+)'", section)
    assert install and install.group(1) == f"polymodal[{extras}]"
    assert "--python-version" in section and "--platform" in section
