"""Review of the day's changes 9d8951c..567edfe (helper session 41, diff review): fusions subclassed from a built-in
without their own __init__ are checked again, the shadowed-folder warning is kept for folders that hold a model, and
stage folders are named after the process (and PID namespace) that really made them."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest

from polymodal.errors import PolymodalError


# -- fusions: the shared options of a subclass of a subclass --------------------------------------------------------

def test_a_registered_fusion_subclassed_without_its_own_init_is_checked(monkeypatch):
    """build_fusion checked every registered fusion's shared options before 18d5e54; the check moved into
    FusionModule.__init_subclass__, which only checked when type(self) defined the __init__ being run."""
    from polymodal import fusion
    from polymodal.fusion import ConcatFusion, build_fusion

    class Renamed(ConcatFusion):  # a user's fusion: a built-in under its own name, no __init__ of its own
        name = "s41_renamed_concat"

    monkeypatch.setitem(fusion.FUSIONS, Renamed.name, Renamed)
    with pytest.raises(PolymodalError, match="hidden must be a whole number"):
        build_fusion(Renamed.name, [4, 4], 8, hidden=0)  # hidden=0 silently meant out_dim
    with pytest.raises(PolymodalError, match="dropout"):
        Renamed([4, 4], 8, dropout=1.5)
    assert build_fusion(Renamed.name, [4, 4], 8, hidden=16).out_dim == 8


def test_options_passed_on_as_keywords_are_checked():
    from polymodal.fusion import ConcatFusion

    class PassesOn(ConcatFusion):
        name = "s41_passes_on"

        def __init__(self, dims, out_dim, **kw):
            super().__init__(dims, out_dim, **kw)

    with pytest.raises(PolymodalError, match="hidden must be a whole number"):
        PassesOn([4, 4], 8, hidden=0)
    assert PassesOn([4, 4], 8, hidden=4).out_dim == 8


# -- a built-in name beside a folder of that name ------------------------------------------------------------------

def test_the_shadowed_folder_warning_is_for_folders_that_hold_a_model(tmp_path, monkeypatch, caplog):
    from polymodal.registry import _warn_of_shadowed_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "notes.txt").write_text("my notes")  # not a model: ./default would not load
    with caplog.at_level(logging.WARNING, logger="polymodal.registry"):
        _warn_of_shadowed_folder("default")
    assert not caplog.records
    (tmp_path / "default" / "model").mkdir()
    (tmp_path / "default" / "model" / "config.json").write_text("{}")  # a training run folder: its model
    with caplog.at_level(logging.WARNING, logger="polymodal.registry"):
        _warn_of_shadowed_folder("default")
    assert "pass ./default/model" in caplog.text
    caplog.clear()
    (tmp_path / "default" / "config.json").write_text("{}")  # a saved model (or a Hugging Face folder)
    with caplog.at_level(logging.WARNING, logger="polymodal.registry"):
        _warn_of_shadowed_folder("default")
    assert "pass ./default to" in caplog.text


# -- stage folders: which process made them ------------------------------------------------------------------------

posix = pytest.mark.skipif(os.name != "posix" or not hasattr(os, "fork"), reason="POSIX processes")


@posix
def test_a_forked_child_names_its_stage_after_itself(tmp_path):
    """The owner was worked out once at import: a forked child named its stage after its parent, so the stage of a
    child still running was removed by the next staged_folder once the parent had exited."""
    from polymodal.cache import staged_folder

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            with staged_folder(tmp_path / "export") as stage:
                os.write(write, stage.name.encode())
        finally:
            os._exit(0)
    os.close(write)
    name = os.read(read, 1000).decode()
    os.waitpid(pid, 0)
    assert f"-{pid}-" in name and f"-{os.getpid()}-" not in name


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@posix
def test_a_stage_of_another_pid_namespace_is_left(tmp_path):
    """A container sharing the host's hostname (docker --network host, a pod's containers) numbers its processes
    apart: its live stage's PID may not run here, and removing it failed that process's export."""
    from polymodal.cache import _pid_namespace, staged_folder

    host = socket.gethostname()
    other_ns = str(int(_pid_namespace()) + 1)
    theirs = tmp_path / f".export.{host}-{other_ns}-{_dead_pid()}-abc123.partial"
    ours = tmp_path / f".export.{host}-{_pid_namespace()}-{_dead_pid()}-def456.partial"
    theirs.mkdir()
    ours.mkdir()
    with staged_folder(tmp_path / "export") as stage:
        (stage / "done.txt").write_text("ok")
    assert theirs.exists() and not ours.exists()
