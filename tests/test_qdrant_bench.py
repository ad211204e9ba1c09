"""benchmarks/qdrant_push.py runs end to end (tiny) and prints its figures as JSON lines."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("qdrant_client")
ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_prints_every_figure():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "qdrant_push.py"), "--images", "120", "--queries", "5"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    context, *rows = map(json.loads, out.splitlines())  # the run context first (benchmarks/run_context.py)
    assert context["context"] == "qdrant_push.py"
    lines = {row["name"]: row for row in rows}
    assert lines["first push (local mode)"]["added"] == 120
    assert lines["push with nothing to do (local mode)"]["unchanged"] == 120
    changed = lines["push after 1% changed (local mode)"]
    assert (changed["added"], changed["removed"]) == (1, 1)
    assert lines["recall@10 of the collection against FAISS's exact answers (local mode)"]["recall"] == 1.0
    assert lines["search, one query at a time, k=10"]["qdrant_ms"] > 0
