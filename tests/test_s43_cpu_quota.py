"""A container's CPU quota (docker --cpus, a Kubernetes CPU limit) sizes torch's and onnxruntime's thread pools,
not the host's core count."""

import os
import subprocess
import sys

import pytest

from polymodal import cpus
from conftest import identity_onnx


@pytest.fixture
def host(monkeypatch, tmp_path):
    """32 cores, all in the affinity mask; cgroup files under tmp_path."""
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.setattr(cpus, "CGROUP_V2", tmp_path / "cpu.max")
    monkeypatch.setattr(cpus, "CGROUP_V1", (tmp_path / "quota", tmp_path / "period"))
    return tmp_path


@pytest.mark.parametrize("cpu_max, usable", [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1),
                                             ("max 100000", None), ("3200000 100000", None), ("garbage", None)])
def test_cgroup_v2_quota(host, cpu_max, usable):
    (host / "cpu.max").write_text(cpu_max + "\n")
    assert cpus.usable_cpus() == usable


def test_cgroup_v1_quota_and_affinity(host, monkeypatch):
    (host / "quota").write_text("400000\n")
    (host / "period").write_text("100000\n")
    assert cpus.usable_cpus() == 4
    (host / "quota").write_text("-1\n")  # no quota
    assert cpus.usable_cpus() is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert cpus.usable_cpus() == 3


def test_onnx_sessions_follow_the_quota(host, tmp_path):
    identity_onnx(tmp_path / "g.onnx")
    from polymodal.export import runtime

    (host / "cpu.max").write_text("200000 100000\n")
    assert runtime.onnx_session(tmp_path / "g.onnx").get_session_options().intra_op_num_threads == 2


def test_the_cli_sets_omp_threads_to_the_quota_unless_the_user_did(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    code = ("import os, sys; from polymodal import cpus, cli; cpus.CGROUP_V2 = cpus.Path(sys.argv[1]); "
            "os.cpu_count = lambda: 32; os.sched_getaffinity = lambda pid: set(range(32)); "
            "cli._quiet_openmp_waits(); print(os.environ.get('OMP_NUM_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    run = lambda extra: subprocess.run([sys.executable, "-c", code, str(tmp_path / "cpu.max")], env={**env, **extra},
                                       capture_output=True, text=True, check=True).stdout.strip()
    assert run({}) == "1"
    assert run({"OMP_NUM_THREADS": "6"}) == "6"
