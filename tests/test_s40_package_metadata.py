"""The version is written once (polymodal.__version__; pyproject reads it), and the licence the metadata declares
ships as a file (an installed wheel had `License-Expression: Apache-2.0` but no licence text)."""

import importlib.metadata
import sys
from pathlib import Path

import polymodal

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_has_one_source():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("polymodal") == polymodal.__version__


def test_the_licence_file_ships():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
