"""-v shows polymodal's progress details, not faiss's loader chatter ("Could not load library with AVX512 support
due to: ModuleNotFoundError ..." read like a failure)."""

import subprocess
import sys


def test_verbose_does_not_print_faiss_loader_lines(tmp_path):
    code = ("import sys; from polymodal import cli; sys.argv = ['polymodal', 'info', '-v']; rc = cli.main(); "
            "import faiss; sys.exit(rc)")  # faiss imported after logging is set up, as search/index do
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "faiss.loader" not in run.stderr and "AVX512" not in run.stderr, run.stderr
