"""Stop 57, suite time (benchruns): test_s40_bench_omp_policy (and test_s41_bench_context) probe every script in one
process, stopping each at its first torch import instead of a process per script paying a torch import each; the
probe must still see what a fresh process would."""

from __future__ import annotations

from test_s40_bench_omp_policy import first_torch_import_policies


def test_the_probe_reads_the_policy_at_each_scripts_first_torch_import(tmp_path):
    """A script that sets the policy only after importing torch is caught; one probed after another that set it
    starts from the caller's environment, and its torch import is seen though an earlier script's was."""
    late = tmp_path / "late.py"
    late.write_text("import os\nimport torch\nos.environ['OMP_WAIT_POLICY'] = 'PASSIVE'\n")
    early = tmp_path / "early.py"
    early.write_text("import os\nos.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')\ntry:\n    import torch\n"
                     "except ImportError:\n    pass\n")
    help_only = tmp_path / "help_only.py"  # --help exits before any torch import: the policy at its exit
    help_only.write_text("import argparse, os\nos.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')\n"
                         "argparse.ArgumentParser().parse_args()\nimport torch\n")
    runs = [(early, None), (late, None), (late, "ACTIVE"), (help_only, None), (early, "ACTIVE")]
    assert first_torch_import_policies(runs) == ["PASSIVE", None, "ACTIVE", "PASSIVE", "ACTIVE"]
