"""Stop 52's review of its later commits (helper diffreviewC): the demo's closing hints, where a run from `python -m
IPython` was trained, and benchmarks/serve_soak.py's ends. Each test fails without its fix; seconds, no model."""

from __future__ import annotations

import os
import sys

import pytest

from conftest import benchmark_module
from polymodal.demo import polymodal_command


def _bin(tmp_path, script: bool):
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", *(("polymodal",) if script else ())):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_the_module_hint_names_this_interpreter_where_the_path_finds_another(tmp_path, monkeypatch):
    """A checkout run as `env/bin/python -m polymodal.demo` (no console script installed): the hint said `python -m
    polymodal`, which ran the PATH's python, without polymodal's packages (ModuleNotFoundError: No module named
    'PIL', reproduced)."""
    bin_dir = _bin(tmp_path, script=False)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    assert polymodal_command() == f"{os.path.join('env', 'bin', 'python')} -m polymodal"
    monkeypatch.setenv("PATH", str(bin_dir))  # the PATH finds this very interpreter: its name is enough
    assert polymodal_command() == "python -m polymodal"


def test_a_script_in_the_working_folder_is_not_named_bare(tmp_path, monkeypatch):
    """The demo run from its environment's bin folder, that folder not on the PATH: the hint said `polymodal index
    ...`, which a shell looks up on the PATH (command not found, or another install's)."""
    bin_dir = _bin(tmp_path, script=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(bin_dir)
    assert polymodal_command() == os.path.join(".", "polymodal")


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell quoting")
def test_a_path_with_a_space_is_quoted_for_the_shell(tmp_path, monkeypatch):
    """An environment under `My Projects/`: the hint `My Projects/env/bin/polymodal index ...` ran `My` (bash: No such
    file or directory, reproduced)."""
    import shlex

    bin_dir = _bin(tmp_path / "My Projects", script=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    assert shlex.split(polymodal_command()) == [os.path.join("My Projects", "env", "bin", "polymodal")]


def test_a_run_from_python_m_ipython_says_an_ipython_session(monkeypatch):
    """`python -m IPython` (IPython's own way without its script on the PATH) has sys.argv[0] = .../IPython/
    __main__.py: trained_with.json read "run as `python .../IPython/__main__.py`" (reproduced with IPython 9.19)."""
    from polymodal.trained_with import _command

    monkeypatch.setattr(sys, "argv", ["/venv/lib/python3.11/site-packages/IPython/__main__.py", "--no-banner"])
    assert _command().endswith("in an IPython session")


def test_serve_soak_refuses_a_count_of_zero_in_one_line(capsys):
    """--window 0 (or --requests / --clients 0) ended in a traceback (ZeroDivisionError in each client, then an
    IndexError: no window to compare); now one line, before anything starts."""
    code = benchmark_module("serve_soak").main(["--window", "0", "--db", "/nonexistent/db"])
    assert code == 2 and capsys.readouterr().err == "error: --window must be at least 1, got 0\n"


def test_serve_soak_names_the_failure_when_no_request_was_answered():
    """A server that failed every request of the mix: the failure that ended the run was lost behind an IndexError
    (no window sampled); now the summary names it."""
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from test_web_page import _serving

    stub = FastAPI()

    @stub.api_route("/{path:path}", methods=["GET", "POST"])
    async def everything(path: str):  # the ids the soak asks for first, then a 500 for every request of the mix
        first = path == "v1/search" and not getattr(stub.state, "asked", False)
        stub.state.asked = True
        return JSONResponse({"hits": [{"id": 1}]}) if first else JSONResponse({"error": "x"}, status_code=500)

    lines: list[str] = []
    with _serving(stub) as base:
        summary = benchmark_module("serve_soak").soak(base, os.getpid(), [b"\xff\xd8"], requests=20, clients=1,
                                                      window=10, seconds=30, uploads=False, out=lines.append)
    assert "500" in summary["failure"] and summary["requests"] == 0, summary
