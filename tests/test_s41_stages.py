"""A process killed outright (SIGKILL, the out-of-memory killer) leaves its hidden stage folder: the next
staged_folder for the same output removes the stages of this machine's processes that no longer run, and only those."""

import os
import socket
import subprocess
import sys

import pytest

from polymodal.cache import _pid_namespace, staged_folder
from conftest import identity_onnx

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process ids are asked with os.kill(pid, 0) on POSIX only")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_process_stage_is_removed_by_the_next_and_others_are_kept(tmp_path):
    host = f"{socket.gethostname()}-{_pid_namespace()}"  # this machine, this PID namespace
    dead = tmp_path / f".export.{host}-{_dead_pid()}-abc123.partial"
    alive = tmp_path / f".export.{host}-{os.getppid()}-def456.partial"  # pytest's parent: running
    elsewhere = tmp_path / f".export.other-host-{_dead_pid()}-ghi789.partial"  # another machine's: unknown
    unnamed = tmp_path / ".export.jkl012.partial"  # an older polymodal's: no owner
    other_out = tmp_path / f".exports.{host}-{_dead_pid()}-mno345.partial"  # another output's
    for folder in (dead, alive, elsewhere, unnamed, other_out):
        folder.mkdir()
        (folder / "graph.onnx").write_bytes(b"x" * 100)
    with staged_folder(tmp_path / "export") as stage:
        assert stage.name.startswith(f".export.{host}-{os.getpid()}-")
        (stage / "done.txt").write_text("ok")
    assert (tmp_path / "export" / "done.txt").read_text() == "ok"
    assert not dead.exists()
    assert alive.exists() and elsewhere.exists() and unnamed.exists() and other_out.exists()


def test_onnx_sessions_start_as_many_threads_as_the_process_may_use(tmp_path, monkeypatch):
    """onnxruntime sizes its default pool by the machine's cores: under taskset or a container's cpuset it started
    more threads than could run. An explicit thread count is kept."""
    identity_onnx(tmp_path / "g.onnx")
    from polymodal.export import runtime

    from polymodal import cpus

    monkeypatch.setattr(cpus, "CGROUP_V2", tmp_path / "no-cpu.max")  # this machine's own quota, if any, aside
    monkeypatch.setattr(cpus, "CGROUP_V1", (tmp_path / "no-quota", tmp_path / "no-period"))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert runtime.onnx_session(tmp_path / "g.onnx").get_session_options().intra_op_num_threads == 3
    assert runtime.onnx_session(tmp_path / "g.onnx", threads=2).get_session_options().intra_op_num_threads == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert runtime.onnx_session(tmp_path / "g.onnx").get_session_options().intra_op_num_threads == 0  # its default
