"""The CLI lets idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless the user chose a policy: spinning
threads made torch several times slower on a machine whose cores other work shares (benchmarks/omp_wait_policy.py)."""

import os
import subprocess
import sys

from polymodal import cli


def test_the_cli_sets_a_passive_wait_policy_unless_one_is_set(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli.main(["search", "--db", "nowhere"]) == 2  # any command, even one that stops at its first check
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cli.main(["search", "--db", "nowhere"]) == 2
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice stands
    capsys.readouterr()


def test_the_policy_is_set_before_torch_loads():
    # OpenMP reads the policy once, when torch loads it: the CLI module must not import torch on its own
    code = "import sys, polymodal.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
