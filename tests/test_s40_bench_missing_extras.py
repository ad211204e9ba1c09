"""A benchmark that needs an optional package that is not installed says which extra brings it, never a traceback:
embed_throughput.py (and serve_load.py, through cpu_runtimes.runnable) leaves onnx out with a line, as it does
torch-bf16 on a CPU without bf16; qdrant_push.py and the coco_yesno*.py attempts exit with one line. A module set to
None in sys.modules fails to import exactly as an uninstalled one does."""

import importlib.util
import sys

import pytest

from test_benchmarks_run import BENCHMARKS, run_benchmark


def _module(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_benchmark_s40x_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_embed_throughput_leaves_out_onnx_without_onnxruntime(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    skipped, *rows = run_benchmark("embed_throughput", ["--runtime", "torch,onnx", "--batches", "1",
                                                        "--seconds", "0.05"], capsys)
    assert skipped["runtime"] == "onnx" and "pip install 'polymodal[onnx]'" in skipped["skipped"]
    assert [(r["runtime"], r["kind"]) for r in rows] == [("torch", "images"), ("torch", "texts")]


def test_embed_throughput_with_nothing_left_to_run(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert _module("embed_throughput", monkeypatch).main(["--runtime", "onnx", "--seconds", "0.05"]) == 2
    assert "none of --runtime runs here" in capsys.readouterr().err


def test_qdrant_push_without_the_client(capsys, monkeypatch):
    module = _module("qdrant_push", monkeypatch)
    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    assert module.main(["--images", "3", "--queries", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "pip install 'polymodal[qdrant]'" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["coco_yesno", "coco_yesno_views", "coco_yesno_captioner", "coco_yesno_tuned_towers"])
def test_coco_yesno_attempts_without_scikit_learn(name, tmp_path, monkeypatch):
    module = _module(name, monkeypatch)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setattr(sys, "argv", [name, "--qa", str(tmp_path / "qa.jsonl")] if name != "coco_yesno_captioner"
                        else [name])
    with pytest.raises(SystemExit, match=r"needs scikit-learn: pip install 'polymodal\[demo\]'"):
        module.main()
