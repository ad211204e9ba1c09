"""Benchmarks that time torch in-process set OMP_WAIT_POLICY=PASSIVE before torch loads (unless the caller chose),
as the CLI does (caption_speed and text_tower record it on their lines): with spinning OpenMP threads beside other
jobs their ratios swung from run to run (cached/rerun decoding 12.0x vs 2.7-3.9x; text tower batch 1 0.06x-5.7x vs 0.9-1.2x with PASSIVE)."""

import os
import subprocess
import sys

import pytest

from test_benchmarks_run import BENCHMARKS, run_benchmark

PROBE = """import os, runpy, sys
seen = []  # the policy when torch is first imported: what OpenMP reads (set after it, it is too late)


class FirstTorchImport:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None


sys.meta_path.insert(0, FirstTorchImport())
script = sys.argv[1]
sys.argv = [script, "--help"]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit:
    pass
print(seen[0] if seen else os.environ.get("OMP_WAIT_POLICY"))  # (torch not imported by --help: set by the end)
"""


TIMED_IN_PROCESS = ["caption_speed", "text_tower", "fused_tower", "embed_throughput", "train_throughput",
                    "vqa_choices", "jpeg_draft", "index_runtime"]


@pytest.mark.parametrize("name, given, expected", [(n, None, "PASSIVE") for n in TIMED_IN_PROCESS]
                         + [("caption_speed", "ACTIVE", "ACTIVE"), ("text_tower", "ACTIVE", "ACTIVE")])
def test_the_wait_policy_is_set_before_torch_loads(name, given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | ({"OMP_WAIT_POLICY": given} if given else {})
    out = subprocess.run([sys.executable, "-c", PROBE, str(BENCHMARKS / f"{name}.py")], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == expected


def test_caption_speed_lines_record_threads_and_the_policy(capsys):
    *rows, _ = run_benchmark("caption_speed", ["--photos", "2", "--beam", "2", "--repeats", "1"], capsys)
    assert all(r["threads"] >= 1 and r["omp_wait_policy"] == os.environ["OMP_WAIT_POLICY"] for r in rows)
