"""Stop 46's review of installation: `make demo` / `make test` started with a Python older than 3.10.

Before, the Makefile made .venv with that Python and only pip then refused ("requires a different Python"); a retry
with PYTHON=python3.12 ran `venv` over that .venv, which keeps its interpreter, so every retry failed the same way
until the user found `make clean`. The Pythons here are stand-ins (an "old" one reports 3.9; the new one makes a
real venv without pip and a pip stub), so the Makefile's own steps run in about a second."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

PIP_ERROR = "ERROR: Package 'polymodal' requires a different Python: 3.9.18 not in '>=3.10'"


def _script(path: Path, text: str) -> Path:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


def _old_python(folder: Path) -> Path:
    """Runs `-c CODE` as Python 3.9.18 would report itself; anything else (pip) fails as pip does there."""
    return _script(folder / "python3.9", f"""if [ "$1" = "-c" ]; then
  exec "{sys.executable}" -c "import sys; sys.version_info = (3, 9, 18, 'final', 0); sys.version = '3.9.18'; \\
code = sys.argv.pop(1); exec(code)" "$2" "$3"
fi
echo "{PIP_ERROR}" >&2; exit 1
""")


def _new_python(folder: Path) -> Path:
    """This Python; `-m venv DIR` makes a real venv (without pip, for speed) and a pip stub that logs its args."""
    return _script(folder / "python-new", f"""if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  "{sys.executable}" -m venv --without-pip "$3" || exit 1
  site=$("$3/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || exit 1
  mkdir -p "$site/pip" && : > "$site/pip/__init__.py" || exit 1
  echo 'import sys; print("pip-stub", *sys.argv[1:])' > "$site/pip/__main__.py"; exit 0
fi
exec "{sys.executable}" "$@"
""")


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, project / name)
    return project


def _make(project: Path, python: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run(["make", "install", f"PYTHON={python}"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)


def test_an_old_python_is_refused_before_any_venv_is_made(tmp_path):
    project, old = _project(tmp_path), _old_python(tmp_path)
    run = _make(project, old)
    assert run.returncode != 0
    assert f"polymodal needs Python 3.10 or newer; {old} is 3.9.18" in run.stderr
    assert "PYTHON=python3.12" in run.stderr
    assert not (project / ".venv").exists()


def test_a_venv_left_by_an_old_python_is_made_again(tmp_path):
    project, old, new = _project(tmp_path), _old_python(tmp_path), _new_python(tmp_path)
    stale = project / ".venv" / "bin"
    stale.mkdir(parents=True)
    (stale / "python").symlink_to(old)  # as `python3.9 -m venv .venv` left it: `venv` over it keeps this link
    run = _make(project, new)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "making it again" in run.stdout
    assert PIP_ERROR not in run.stderr
    assert "pip-stub install -q -e .[demo,train,serve,onnx,test]" in run.stdout
    assert (project / ".venv" / ".installed").exists()
    version = subprocess.run([project / ".venv" / "bin" / "python", "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version == str(tuple(sys.version_info[:2]))


def test_a_working_venv_is_kept(tmp_path):
    project, new = _project(tmp_path), _new_python(tmp_path)
    assert _make(project, new).returncode == 0
    marker = project / ".venv" / "kept"
    marker.touch()
    (project / ".venv" / ".installed").unlink()  # e.g. pyproject.toml changed: the install runs again
    run = _make(project, new)
    assert run.returncode == 0, run.stdout + run.stderr
    assert marker.exists() and "making it again" not in run.stdout
