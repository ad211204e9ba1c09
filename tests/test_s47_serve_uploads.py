"""benchmarks/serve_uploads.py: bursts of uploads to a served index, the delta against rewriting vectors.faiss per
commit, in one run (the README's figures for served uploads come from it)."""

from tests.test_benchmarks_run import run_benchmark


def test_benchmark_runs_both_servers_and_compares(capsys) -> None:
    *lines, ratio = run_benchmark("serve_uploads", ["--rows", "30", "--bursts", "1,3"], capsys)
    assert [(r["vectors_file"], r["burst"]) for r in lines] == [("delta", 1), ("delta", 3), ("whole", 1), ("whole", 3)]
    assert all(r["ok"] == r["burst"] and r["503"] == 0 and r["other"] == [] and r["rows"] == 30 for r in lines)
    assert ratio["burst"] == 3 and ratio["last_reply_whole/delta"] > 0


def test_a_bad_burst_is_one_line_and_exit_2(capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "serve_uploads.py"
    spec = importlib.util.spec_from_file_location("_serve_uploads", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--bursts", "8,x"]) == 2
    assert capsys.readouterr().err.startswith("error: --bursts takes counts >= 1")
