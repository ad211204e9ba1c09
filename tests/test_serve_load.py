"""benchmarks/serve_load.py end to end on a tiny load: its raw-HTTP client gets 200s from a real `polymodal serve`
(bf16 where the CPU has it), counts every request, and the batching line reports merged passes."""

import json

from conftest import benchmark_module
from polymodal.encoders.frozen_trunk import bf16_supported


def test_serve_load_smoke(capsys):
    """The script's main() in this process (its servers and the gallery's `polymodal index` are processes of their
    own, as in a user's run): a process for the script itself paid a torch import and start-up (~2 s) for nothing
    this test checks."""
    runtime = "torch-bf16" if bf16_supported() else "torch"
    code = benchmark_module("serve_load", "s57").main(["--runtime", runtime, "--kinds", "image,text",
                                                        "--concurrency", "1,6", "--requests", "6",
                                                        "--time-limit", "60"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    runs = [d for d in lines if "qps" in d]
    assert len(runs) == 2 * 2 * 2  # batching on/off x kinds x concurrency levels
    for d in runs:
        assert d["errors"] == 0 and d["requests"] == 6 and d["qps"] > 0 and d["runtime"] == runtime, d
        assert d["mean_batch"] >= 1.0 if d["batching"] else d["mean_batch"] == 1.0, d
    ratios = [d for d in lines if d.get("ratio") == "qps_batching/qps_no_batching"]
    assert {d["kind"] for d in ratios} == {"image", "text"} and all(d["value"] > 0 for d in ratios)
