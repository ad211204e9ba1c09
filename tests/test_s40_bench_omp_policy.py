"""Benchmarks that time torch in-process set OMP_WAIT_POLICY=PASSIVE before torch loads (unless the caller chose),
as the CLI does (caption_speed and text_tower record it on their lines): with spinning OpenMP threads beside other
jobs their ratios swung from run to run (cached/rerun decoding 12.0x vs 2.7-3.9x; text tower batch 1 0.06x-5.7x vs
0.9-1.2x with PASSIVE). That caption_speed's lines record the threads and the policy: test_benchmarks_run's run
of it checks it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_benchmarks_run import BENCHMARKS

# One process probes every script: each runs (with --help) until its first `import torch`, where the policy is read
# (what OpenMP reads when torch loads; set after it, it is too late) and the script stopped, so torch never loads
# and the next script starts as in a fresh process (the checkout's modules and the environment put back). A process
# per script paid a torch import each (~2 s).
PROBE = """import json, os, runpy, sys


class TorchImport(BaseException):  # (not an Exception: a script's `except ImportError` cannot swallow it)
    pass


class FirstTorchImport:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise TorchImport(os.environ.get("OMP_WAIT_POLICY"))
        return None


sys.meta_path.insert(0, FirstTorchImport())
ours = tuple(os.path.join(sys.argv[1], part, "") for part in ("polymodal", "benchmarks"))  # not .venv's packages
env, path, argv = dict(os.environ), list(sys.path), sys.argv
seen = []
for script, given in json.loads(argv[2]):
    os.environ.clear()
    os.environ.update(env | ({"OMP_WAIT_POLICY": given} if given else {}))
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
        raise SystemExit(f"{script} --help did not exit")
    except TorchImport as stop:
        seen.append(stop.args[0])
    except SystemExit as done:
        if done.code not in (0, None):
            raise
        seen.append(os.environ.get("OMP_WAIT_POLICY"))  # (torch not imported by --help: set by the end)
    sys.path[:] = path
    for name, module in list(sys.modules.items()):  # polymodal's and the scripts' helpers import afresh
        if (getattr(module, "__file__", None) or "").startswith(ours):
            del sys.modules[name]
print(json.dumps(seen))
"""


def first_torch_import_policies(runs: list[tuple[Path, str | None]]) -> list[str | None]:
    """OMP_WAIT_POLICY when each (script, the caller's OMP_WAIT_POLICY or None) first imports torch."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(BENCHMARKS.parent),
                          json.dumps([(str(script), given) for script, given in runs])],
                         env=env, capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


TIMED_IN_PROCESS = ["caption_speed", "text_tower", "fused_tower", "embed_throughput", "train_throughput",
                    "vqa_choices", "jpeg_draft", "index_runtime"]
CASES = [(n, None, "PASSIVE") for n in TIMED_IN_PROCESS] + [("caption_speed", "ACTIVE", "ACTIVE"),
                                                            ("text_tower", "ACTIVE", "ACTIVE")]


@pytest.fixture(scope="module")
def policies() -> dict:
    seen = first_torch_import_policies([(BENCHMARKS / f"{name}.py", given) for name, given, _ in CASES])
    return dict(zip([(name, given) for name, given, _ in CASES], seen))


@pytest.mark.parametrize("name, given, expected", CASES)
def test_the_wait_policy_is_set_before_torch_loads(name, given, expected, policies):
    assert policies[name, given] == expected
