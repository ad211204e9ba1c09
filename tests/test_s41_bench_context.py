"""Every benchmark prints a context line first (benchmarks/run_context.py): polymodal's version and commit, Python,
torch, its threads, OMP_WAIT_POLICY, the CPU and the date, so that figures measured at other commits, settings or
machines can be told apart. It never fails a run (no git: null), and it prints only when the script is the
program being run (tests calling a script's main() in-process get no extra line)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
KEYS = {"context", "polymodal", "commit", "dirty", "python", "torch", "threads", "omp_wait_policy", "cpu", "cores",
        "date"}
HELPERS = {"run_context.py", "cpu_runtimes.py"}  # imported by scripts, not run: their JSON goes in the script's run


@pytest.fixture
def run_context():
    spec = importlib.util.spec_from_file_location("_s41_run_context", BENCHMARKS / "run_context.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_program(monkeypatch, script: Path) -> None:
    """Makes ``script`` look like the file this interpreter was started on."""
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__=str(script)))


def test_announce_prints_one_json_line_with_the_run_context(run_context, monkeypatch, capsys):
    script = BENCHMARKS / "fused_tower.py"
    as_program(monkeypatch, script)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    record = run_context.announce(str(script), onnx_threads=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == record
    assert set(record) == KEYS | {"onnx_threads"} and record["onnx_threads"] == 2
    assert record["context"] == "fused_tower.py" and record["threads"] == torch.get_num_threads()
    assert record["torch"] == torch.__version__ and record["omp_wait_policy"] == "PASSIVE"
    import polymodal

    assert record["polymodal"] == polymodal.__version__ and record["cores"] == os.cpu_count()
    assert record["date"].endswith("+00:00") and record["python"] == ".".join(map(str, sys.version_info[:3]))
    if record["commit"] is not None:  # a git checkout: a short hash, and whether tracked files changed
        assert re.fullmatch(r"[0-9a-f]{4,40}", record["commit"]) and isinstance(record["dirty"], bool)


@pytest.mark.parametrize("how", ["no git on PATH", "git fails"])
def test_without_git_the_commit_is_null_and_the_line_still_prints(run_context, monkeypatch, capsys, how):
    script = BENCHMARKS / "fused_tower.py"
    as_program(monkeypatch, script)
    if how == "no git on PATH":
        monkeypatch.setenv("PATH", "")
    else:
        def broken(*args, **kwargs):
            raise FileNotFoundError("git")

        monkeypatch.setattr(run_context.subprocess, "run", broken)
    record = run_context.announce(str(script))
    assert record["commit"] is None and record["dirty"] is None
    assert json.loads(capsys.readouterr().out) == record and record["threads"] == torch.get_num_threads()


def test_outside_a_checkout_the_commit_is_null(run_context, monkeypatch, tmp_path):
    monkeypatch.setattr(run_context, "CHECKOUT", tmp_path)  # not a repository
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    record = run_context.context("x.py")
    assert (record["commit"], record["dirty"]) == (None, None) and set(record) == KEYS


def test_no_line_when_the_script_is_not_the_program(run_context, capsys):
    """A test (or another script) calling a benchmark's main() in-process gets its figures only."""
    assert run_context.announce(str(BENCHMARKS / "fused_tower.py")) is None
    assert capsys.readouterr().out == ""


def test_a_failure_inside_never_fails_the_benchmark(run_context, monkeypatch, capsys):
    as_program(monkeypatch, BENCHMARKS / "fused_tower.py")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(run_context, "context", broken)
    assert run_context.announce(str(BENCHMARKS / "fused_tower.py")) is None
    out, err = capsys.readouterr()
    assert out == "" and "no context line" in err


def test_importing_it_imports_no_torch():
    """Scripts set OMP_WAIT_POLICY before torch loads; the import of run_context must not load it first."""
    code = (f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import run_context; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "False"


def test_every_benchmark_that_prints_json_announces_its_context():
    """Guards future scripts: one that prints JSON lines calls announce() (helpers imported by scripts excepted)."""
    scripts = sorted(p for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)
    prints_json = [p for p in scripts if "json.dump" in (text := p.read_text()) and "print(" in text]
    assert len(prints_json) >= 25  # the check looks where the scripts are
    missing = [p.name for p in prints_json if "announce(__file__" not in p.read_text()]
    assert not missing, f"call announce(__file__) at the start of main(): {missing}"
    for p in prints_json:
        # (beside other names: some scripts also import SHARED_DATA)
        assert re.search(r"^from run_context import (.+, )?announce\b", p.read_text(), re.M), p.name


def test_a_script_run_end_to_end_prints_the_context_line_first_then_its_figures():
    """fused_tower.py as a program: the context line, then its figures, which test_benchmarks_run checks of the other
    scripts run in-process (the BatchNorm-folded tower's parity with the eager one among them)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([sys.executable, str(BENCHMARKS / "fused_tower.py"), "--batches", "2", "--seconds", "0.1",
                          "--photos", "3", "--threads", "1"], capture_output=True, text=True, timeout=120,
                         check=True, env=env).stdout
    first, *rest = [json.loads(line) for line in out.splitlines()]
    assert set(first) == KEYS and first["context"] == "fused_tower.py"
    assert first["threads"] == 1 and first["omp_wait_policy"] == "PASSIVE"  # the script's default, set before torch
    assert [r.get("tower", r.get("model")) for r in rest] == ["efficientnet-lite0", "lite"]  # its figures follow
    assert not any("context" in r for r in rest)
    tower, end_to_end = rest
    assert tower["batch"] == 2 and tower["eager_images_per_s"] > 0 and tower["fused/eager"] > 0
    assert tower["max_abs_feature_diff"] < 1e-3  # the BatchNorm-folded copy computes the same features
    assert end_to_end["photos"] == 3 and end_to_end["fused_images_per_s"] > 0


TRAINING_SPEED_SCRIPTS = ["fusion_compare", "pretrain_fusion", "hard_negatives"]


@pytest.fixture(scope="module")
def training_speed_policies() -> dict:
    from test_s40_bench_omp_policy import first_torch_import_policies

    return dict(zip(TRAINING_SPEED_SCRIPTS, first_torch_import_policies(
        [(BENCHMARKS / f"{name}.py", None) for name in TRAINING_SPEED_SCRIPTS])))


@pytest.mark.parametrize("name", TRAINING_SPEED_SCRIPTS)
def test_the_three_training_speed_scripts_set_the_wait_policy_before_torch(name, training_speed_policies):
    """As the 8 timed scripts of test_s40_bench_omp_policy do (and the CLI): PASSIVE unless the caller chose."""
    assert training_speed_policies[name] == "PASSIVE"
