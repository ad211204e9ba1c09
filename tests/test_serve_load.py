"""benchmarks/serve_load.py end to end on a tiny load: its raw-HTTP client gets 200s from a real `polymodal serve`
(bf16 where the CPU has it), counts every request, and the batching line reports merged passes."""

import json
import subprocess
import sys
from pathlib import Path

from polymodal.encoders.frozen_trunk import bf16_supported

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


def test_serve_load_smoke():
    runtime = "torch-bf16" if bf16_supported() else "torch"
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--runtime", runtime, "--kinds", "image,text", "--concurrency", "1,6",
         "--requests", "6", "--time-limit", "60"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    runs = [d for d in lines if "qps" in d]
    assert len(runs) == 2 * 2 * 2  # batching on/off x kinds x concurrency levels
    for d in runs:
        assert d["errors"] == 0 and d["requests"] == 6 and d["qps"] > 0 and d["runtime"] == runtime, d
        assert d["mean_batch"] >= 1.0 if d["batching"] else d["mean_batch"] == 1.0, d
    ratios = [d for d in lines if d.get("ratio") == "qps_batching/qps_no_batching"]
    assert {d["kind"] for d in ratios} == {"image", "text"} and all(d["value"] > 0 for d in ratios)
