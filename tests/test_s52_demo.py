"""The demo's closing hints name the command as this install has it: they said `.venv/bin/polymodal ...`, right only
after `make demo` in a checkout, wrong for a pip install into another environment (stop 52's wheel review)."""

import os
import sys

from polymodal.demo import polymodal_command


def _install(tmp_path, script: bool = True):
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("")
    if script:
        (bin_dir / "polymodal").write_text("#!/bin/sh\n")
        (bin_dir / "polymodal").chmod(0o755)
    return bin_dir


def test_the_plain_name_where_the_path_finds_this_install(tmp_path, monkeypatch):
    bin_dir = _install(tmp_path)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin")
    assert polymodal_command() == "polymodal"


def test_the_scripts_path_where_it_does_not(tmp_path, monkeypatch):
    bin_dir = _install(tmp_path)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    assert polymodal_command() == os.path.join("env", "bin", "polymodal")  # `.venv/bin/polymodal` after make demo
    monkeypatch.chdir(tmp_path / "env")
    assert polymodal_command() == os.path.join("bin", "polymodal")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert polymodal_command() == str(bin_dir / "polymodal")  # not under the working folder: absolute


def test_the_module_where_no_script_was_installed(tmp_path, monkeypatch):
    bin_dir = _install(tmp_path, script=False)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    # this interpreter by its path: the PATH finds no python here (a bare `python` ran another one, diffreviewC)
    assert polymodal_command() == f"{bin_dir / 'python'} -m polymodal"
