"""--runtime onnx on the commands that embed (index, search, classify, eval retrieval, eval zeroshot): the export of
--model runs through onnxruntime, and indexes made either way are interchangeable (same model key)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from polymodal import cli  # noqa: E402
from polymodal.export.onnx_export import export_onnx, validation_set  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402


@pytest.fixture(scope="module")
def cache_with_export(lite, tmp_path_factory):
    """A cache folder holding `lite`'s export where `--model lite --runtime onnx` looks (onnx/lite), and a copy of the
    run's lite class-prompt matrix (the first command loading `lite` here computed its 1,000 prompt embeddings again,
    ~4 s, as conftest's fresh_cache says)."""
    cache = tmp_path_factory.mktemp("cache-with-export")
    for matrix in Path(os.environ["POLYMODAL_CACHE"]).glob("conse-classes-*.npy"):
        shutil.copyfile(matrix, cache / matrix.name)
    export_onnx(lite, cache / "onnx" / "lite", validation_set(None), variants=[], timing_seconds=0.02)
    return cache


@pytest.fixture
def onnx_cache(cache_with_export, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(cache_with_export))
    return cache_with_export


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_index_and_search_with_onnx_match_torch(onnx_cache, gallery, tmp_path, capsys, monkeypatch):
    import onnxruntime

    sessions = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **kw: sessions.append(a[0]) or real(*a, **kw))
    onnx_db, torch_db = str(tmp_path / "onnx.idx"), str(tmp_path / "torch.idx")
    assert cli.main(["index", str(gallery), "--db", onnx_db, "--runtime", "onnx", "--json"]) == 0
    assert last_json(capsys)["added"] == 15 and any("image" in str(s) for s in sessions)  # onnxruntime embedded
    assert cli.main(["index", str(gallery), "--db", torch_db, "--json"]) == 0
    capsys.readouterr()
    assert ImageIndex(onnx_db).info()["model"] == ImageIndex(torch_db).info()["model"]  # interchangeable
    for db, runtime in ((onnx_db, "torch"), (torch_db, "onnx"), (onnx_db, "onnx")):
        assert cli.main(["search", "a cup of coffee", "--db", db, "--runtime", runtime, "-k", "1", "--json"]) == 0
        assert Path(last_json(capsys)[0]["path"]).name == "coffee.jpg"


def test_classify_and_eval_take_the_runtime(onnx_cache, gallery, tmp_path, capsys):
    assert cli.main(["classify", str(gallery / "coffee.jpg"), "--labels", "a cup of coffee,a rocket", "--runtime",
                     "onnx", "--model", "lite", "--json"]) == 0
    out = capsys.readouterr().out
    assert "a cup of coffee" in out.split("rocket")[0]  # the coffee label ranks first
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": c}) + "\n" for n, c in
                             (("coffee", "a cup of coffee"), ("rocket", "a rocket on a launch pad"),
                              ("cat", "a close-up of a cat"))))
    assert cli.main(["eval", "retrieval", "--pairs", str(pairs), "--model", "lite", "--runtime", "onnx"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])  # stdout stays one JSON line; the bar goes to stderr
    assert result["runtime"] == "onnx" and result["images"] == 3 and "embedding" in err and "3/3" in err
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "label": n}) + "\n"
                              for n in ("coffee", "rocket", "cat")))
    assert cli.main(["eval", "zeroshot", "--labels-file", str(labels), "--model", "lite", "--runtime", "onnx"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["images"] == 3 and "3/3" in err


def test_an_export_folder_runs_with_onnx_without_saying_so(onnx_cache, gallery, tmp_path, capsys, monkeypatch):
    """--runtime defaults to auto: an export folder as --model (or as the index's model) runs through onnxruntime;
    before, a plain `index --model EXPORT` and a plain `search` of such an index were refused."""
    export, db = str(onnx_cache / "onnx" / "lite"), str(tmp_path / "db")
    monkeypatch.setattr(cli, "TIP_RUNTIME_AT", 1)  # the torch runtime's tip would show here
    assert cli.main(["index", str(gallery), "--db", db, "--model", export]) == 0
    assert "tip: --runtime onnx" not in capsys.readouterr().err
    assert ImageIndex(db).info()["model_name"] == export  # where to load it from again
    assert cli.main(["search", "coffee", "--db", db, "-k", "1", "--json"]) == 0
    assert Path(last_json(capsys)[0]["path"]).name == "coffee.jpg"
    assert cli.main(["search", "coffee", "--db", db, "--runtime", "onnx", "-k", "1", "--json"]) == 0
    assert Path(last_json(capsys)[0]["path"]).name == "coffee.jpg"
    assert cli.main(["search", "coffee", "--db", db, "--runtime", "torch"]) == 2  # asked for torch: one line why not
    assert "is an ONNX export, which runs with runtime='onnx'" in capsys.readouterr().err


def test_auto_runtime_is_settled_before_the_command_runs(onnx_cache, tmp_path):
    from polymodal.cli_options import resolve_runtime

    export = str(onnx_cache / "onnx" / "lite")
    for argv, expected in [(["index", "x", "--db", "d", "--model", export], "onnx"),
                           (["index", "x", "--db", "d", "--model", "lite"], "torch"),  # by name: torch, even exported
                           (["index", "x", "--db", "d"], "auto"),  # the index's model (or lite): cmd_index settles it
                           (["index", "x", "--db", "d", "--model", export, "--runtime", "torch"], "torch"),
                           (["vqa", "i.png", "q?", "--model", export], "onnx"),
                           (["eval", "vqa", "--qa", "f.jsonl"], "torch"),
                           (["search", "q", "--db", "d"], "auto")]:  # the index's model decides, in polymodal.load
        args = cli.build_parser().parse_args(argv)
        resolve_runtime(args)
        assert args.runtime == expected, argv


def test_runtime_mistakes_are_one_line(gallery, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "empty-cache"))
    assert cli.main(["index", str(gallery), "--db", str(tmp_path / "db"), "--runtime", "onnx"]) == 2
    assert "no ONNX export of 'lite'" in capsys.readouterr().err and not (tmp_path / "db").exists()
    assert cli.main(["index", str(gallery), "--db", str(tmp_path / "db"), "--runtime", "onnx", "--precision",
                     "bf16"]) == 2
    assert "precision applies to the PyTorch runtime" in capsys.readouterr().err


def test_the_index_runtime_benchmark_runs(cache_with_export, gallery):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "index_runtime.py"
    out = subprocess.run([sys.executable, str(script), "--images", str(gallery)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "POLYMODAL_CACHE": str(cache_with_export)}, check=True).stdout
    context, *rows = [json.loads(line) for line in out.splitlines()]  # the run context first (run_context.py)
    assert context["context"] == "index_runtime.py"
    assert [r.get("runtime") for r in rows[:2]] == ["torch", "onnx"] and all(r["images"] == 15 for r in rows[:2])
    assert rows[-1]["ratio"] > 0 and rows[-1]["top10_overlap_of_the_two_indexes"] > 0.8


def test_info_lists_the_onnx_exports(onnx_cache, capsys, tmp_path, monkeypatch):
    assert cli.main(["info", "--json"]) == 0
    assert last_json(capsys)["onnx_exports"] == {"lite": str(onnx_cache / "onnx" / "lite")}
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "empty"))
    assert cli.main(["info"]) == 0
    assert "ONNX exports for --runtime onnx: none (polymodal export onnx NAME makes one)" in capsys.readouterr().out


def test_a_big_torch_index_run_mentions_the_onnx_runtime(gallery, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "TIP_RUNTIME_AT", 15)
    assert cli.main(["index", str(gallery), "--db", str(tmp_path / "db")]) == 0
    first = capsys.readouterr().err
    assert "tip: --runtime onnx embeds photos ~2x faster" in first
    assert cli.main(["index", str(gallery), "--db", str(tmp_path / "db")]) == 0  # nothing embedded: no tip
    assert "tip:" not in capsys.readouterr().err
    assert "(after `polymodal export onnx lite`)" in first


def test_the_onnx_tip_does_not_ask_for_an_export_the_cache_holds(gallery, fresh_cache, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr(cli, "TIP_RUNTIME_AT", 15)
    (fresh_cache / "onnx" / "lite").mkdir(parents=True)
    (fresh_cache / "onnx" / "lite" / "onnx_config.json").write_text("{}")  # an export is there
    assert cli.main(["index", str(gallery), "--db", str(tmp_path / "db")]) == 0
    err = capsys.readouterr().err
    assert "tip: --runtime onnx embeds photos ~2x faster on a CPU; the index stays the same" in err


def test_texts_are_cached_per_runtime(onnx_cache, lite):
    import polymodal
    from polymodal.apps.text_search import text_embeddings

    texts = ["a sentence only this test embeds", "and another"]
    onnx = polymodal.load("lite", runtime="onnx")
    banks = lambda: set((onnx_cache / "features").glob("text-bank-*.npy"))  # noqa: E731
    before = banks()
    torch_vectors, onnx_vectors = text_embeddings(lite, texts), text_embeddings(onnx, texts)
    assert len(banks() - before) == 2  # one entry each: an int8 export's vectors never stand in for torch's
    np.testing.assert_allclose(onnx_vectors, np.asarray(onnx.encode_text(texts), np.float32), atol=2e-3)
    np.testing.assert_allclose(torch_vectors, np.asarray(lite.encode_text(texts), np.float32), atol=2e-3)
