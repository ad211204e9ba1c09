"""ONNX export: parity with PyTorch on real photos, the keep/reject gate, the torch-free runtime, CLI and serving."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

import polymodal  # noqa: E402
from polymodal import cli  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.export.onnx_export import export_onnx, gate, validation_set  # noqa: E402
from polymodal.export.runtime import OnnxEmbeddingModel  # noqa: E402
from conftest import skip_unless_clip_exports, skip_unless_int8_loaded  # noqa: E402
from polymodal.export.variants import bf16_unavailable  # noqa: E402


@pytest.fixture(scope="module")
def lite_export(lite, tmp_path_factory):
    """lite's export checked on 4 of the 15 sample photos (_few_photos): its references, timings, alone-vs-batch and
    R@5 runs are on 4 photos and captions; R@5 over 15 was already too few to refuse a variant (MIN_GATE_IMAGES 50).
    lite's fp32 graphs are checked on all 15 by test_cli_runtime's export (validation_set(None))."""
    out = tmp_path_factory.mktemp("onnx") / "lite"
    report = export_onnx(lite, out, _few_photos(), variants=["int8_dynamic", "bf16"], timing_seconds=0.05)
    return out, report


def test_export_writes_parity_checked_graphs_and_a_report(lite_export):
    out, report = lite_export
    import onnxruntime

    # the versions it was checked with, for a deployer with another onnxruntime (s45)
    assert json.loads((out / "report.json").read_text())["made_with"] == report["made_with"]
    assert report["made_with"]["onnxruntime"] == onnxruntime.__version__ and report["made_with"]["opset"] == 17
    rows = {(r["tower"], r["variant"]): r for r in report["tries"]}
    for tower in ("image", "text"):
        base = rows[(tower, "fp32")]
        assert base["status"] == "baseline" and base["min_cosine_vs_pytorch"] >= 0.999
        trial = rows[(tower, "int8_dynamic")]
        assert trial["status"] in ("kept", "rejected", "failed") and trial["reason"]
        if trial["status"] != "failed":  # activations quantized per batch: a vector depends on its batch
            assert 0.9 < trial["alone_vs_batch_min_cosine"] <= 1.0
        served = report["served"][tower]
        assert served == "fp32" or rows[(tower, served)]["status"] == "kept"
        if bf16_unavailable():  # CPU-only onnxruntime: said once per tower, not a cryptic exporter failure
            assert rows[(tower, "bf16")]["status"] == "skipped" and "no bf16 kernels" in rows[(tower, "bf16")]["reason"]
            assert not (out / f"{tower}.bf16.onnx").exists()
    assert rows[("text", "int8_dynamic")]["alone_vs_batch_min_cosine"] < 0.99999  # measured, not assumed to be 1
    assert "alone vs in a batch (min cosine)" in (out / "report.md").read_text()
    config = json.loads((out / "onnx_config.json").read_text())
    assert (out / config["image"]["file"]).is_file() and (out / config["text"]["file"]).is_file()
    assert "| image | fp32 | baseline |" in (out / "report.md").read_text()
    # rejected variants leave no file behind
    for r in report["tries"]:
        if r["status"] in ("rejected", "failed"):
            assert not (out / f"{r['tower']}.{r['variant']}.onnx").exists()


def test_gate_keeps_only_faster_and_accurate_variants():
    assert gate(200.0, 100.0, 0.5, 1.0)[0] == "kept"
    assert gate(101.0, 100.0, 0.0, 1.0)[0] == "rejected"  # within timing noise is not faster
    assert gate(16.0, 253.0, 0.0, 1.0)[0] == "rejected"  # dynamic int8 convolutions: slower than fp32
    status, reason = gate(300.0, 100.0, 1.5, 1.0)
    assert status == "rejected" and "over the 1-point limit" in reason
    assert gate(200.0, 100.0, 1.0, 1.0)[0] == "kept"  # a drop of exactly the limit is within it
    assert gate(200.0, 100.0, 1.0, 1.0)[1].endswith("R@5 drop 1.0 points (within the 1-point limit)")
    assert gate(200.0, 100.0, -2.4, 1.0)[1].endswith("R@5 gain 2.4 points (within the 1-point limit)")  # not "drop -2.4"
    assert gate(200.0, 100.0, -0.0, 1.0)[1].endswith("R@5 unchanged (within the 1-point limit)")
    # stop 38: an embedding graph's vectors must stay near PyTorch's, whatever R@5 says (indexes mix runtimes)
    assert gate(200.0, 100.0, 0.0, 1.0, min_cosine=0.989)[0] == "kept"
    status, reason = gate(200.0, 100.0, 1.0, 1.0, min_cosine=0.70)
    assert status == "rejected" and "vectors too far from PyTorch's (min cosine 0.700 < 0.95" in reason


def test_a_variant_whose_vectors_stray_from_pytorchs_is_not_served(tiny_clip, tmp_path, monkeypatch):
    skip_unless_clip_exports()
    import polymodal.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "paired_speed", lambda *a, **k: (300.0, 100.0))  # always much faster
    monkeypatch.setattr(onnx_export, "VARIANT_MIN_COSINE", 1.01)  # no int8 graph can be this close
    report = export_onnx(tiny_clip, tmp_path / "out", _few_photos(), variants=["int8_dynamic"], max_drop_points=100.0,
                         timing_seconds=0.02)
    for row in report["tries"]:
        skip_unless_int8_loaded(row)
    rows = {(r["tower"], r["variant"]): r for r in report["tries"]}
    assert report["served"] == {"image": "fp32", "text": "fp32"}
    assert all("vectors too far" in rows[(t, "int8_dynamic")]["reason"] for t in ("image", "text"))


def _few_photos(n: int = 4):
    """The first n built-in sample photos: enough for the tests whose gate is stubbed (the parity and the R@5 rows
    still run), a third of the export time of all 15."""
    import dataclasses

    val = validation_set(None)
    return dataclasses.replace(val, images=val.images[:n], captions=val.captions[:n], caption_image=val.caption_image[:n])


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP checkpoint: the tests whose gate is stubbed check the export's choices, not the model, and
    its graphs export and quantize in a fraction of lite's time."""
    from test_clip_checkpoints import make_tiny_clip

    from polymodal.models.clip import load_clip

    return load_clip(make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip"))


def test_a_variant_the_gate_rejects_is_never_served(tiny_clip, tmp_path, monkeypatch):
    skip_unless_clip_exports()
    import polymodal.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "gate", lambda *a, **k: ("rejected", "stub gate: rejected"))
    report = export_onnx(tiny_clip, tmp_path / "out", _few_photos(), variants=["int8_dynamic"], timing_seconds=0.02)
    assert report["served"] == {"image": "fp32", "text": "fp32"}
    assert not list((tmp_path / "out").glob("*.int8_dynamic.onnx"))


def test_runtime_matches_pytorch_and_never_imports_torch(lite_export, lite, gallery, tmp_path):
    out, report = lite_export
    images = sorted(gallery.glob("*.jpg"))[:4]
    texts = ["a tabby cat", "a cup of coffee", "a rocket on the launch pad"]
    np.save(tmp_path / "img.npy", lite.encode_image(images))
    np.save(tmp_path / "txt.npy", lite.encode_text(texts))
    script = textwrap.dedent(f"""
        import sys, json
        import numpy as np
        import polymodal
        m = polymodal.load({str(out)!r}, runtime="onnx")
        img = m.encode_image({[str(p) for p in images]!r})
        txt = m.encode_text({texts!r})
        top = m.classify([{str(gallery / 'cat.jpg')!r}], ["cat", "car", "coffee"])[0][0][0]
        print(json.dumps({{"torch": "torch" in sys.modules, "key": m.key, "top": top,
            "img": float((img * np.load({str(tmp_path / 'img.npy')!r})).sum(1).min()),
            "txt": float((txt * np.load({str(tmp_path / 'txt.npy')!r})).sum(1).min())}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ})
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    assert got["key"] == lite.key  # an index built with the PyTorch model serves with its export
    assert got["top"] == "cat"
    floor = {"fp32": 0.999}
    assert got["img"] >= floor.get(report["served"]["image"], 0.98)
    assert got["txt"] >= floor.get(report["served"]["text"], 0.98)


def test_eval_retrieval_on_the_export_never_imports_torch(lite_export, gallery, tmp_path):
    out, _ = lite_export
    rows = {"cat.jpg": "a tabby cat", "coffee.jpg": "a cup of coffee", "rocket.jpg": "a rocket on the launch pad"}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / k), "caption": v}) + "\n" for k, v in rows.items()))
    script = textwrap.dedent(f"""
        import sys
        from polymodal.cli import main
        assert main(["eval", "retrieval", "--pairs", {str(pairs)!r}, "--model", {str(out)!r}, "--runtime", "onnx"]) == 0
        print("TORCH", "torch" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[0])["t2i_R@1"] == 1.0 and lines[-1] == "TORCH False"
    served = json.loads((out / "onnx_config.json").read_text())  # the line says which graphs ran, not "fp32"
    assert json.loads(lines[0])["variants"] == {t: served[t]["variant"] for t in ("image", "text")}


def test_text_graph_has_dynamic_batch_and_length(lite_export, lite):
    out, _ = lite_export
    model = OnnxEmbeddingModel(out)
    texts = ["a dog", "a much longer description of a dog running on the beach " * 6]
    for batch in (texts[:1], texts, texts * 3):
        emb = model.encode_text(batch)
        assert emb.shape == (len(batch), lite.dim)
        assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert float((model.encode_text(texts) * lite.encode_text(texts)).sum(1).min()) > 0.98


@pytest.mark.parametrize("version, refused", [("5.4.0", True), ("5.8.1", True), ("5.3.0", False), ("5.9.0", False),
                                               ("4.57.6", False), ("5.10.0.dev0", False)])
def test_clip_export_on_a_transformers_that_cannot_trace_it_is_one_clear_error(tiny_clip, tmp_path, monkeypatch,
                                                                             version, refused):
    import transformers

    monkeypatch.setattr(transformers, "__version__", version)
    if not refused:
        tiny_clip.check_onnx_export()
        return
    with pytest.raises(PolymodalError, match=f"transformers {version} cannot export a CLIP text tower.*>=5.9"):
        export_onnx(tiny_clip, tmp_path / "out", validation_set(None), variants=[], timing_seconds=0.02)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_tiny_clip_checkpoint_exports_with_parity(tiny_clip, tmp_path):
    skip_unless_clip_exports()
    model = tiny_clip
    report = export_onnx(model, tmp_path / "clip-onnx", validation_set(None), variants=[], timing_seconds=0.02)
    assert [r["variant"] for r in report["tries"]] == ["fp32", "fp32"]
    assert all(r["min_cosine_vs_pytorch"] >= 0.999 for r in report["tries"])
    onnx_model = OnnxEmbeddingModel(tmp_path / "clip-onnx")
    texts = ["a cat", "cat dog cat dog cat dog cat dog cat dog cat dog cat dog"]  # the second is truncated
    assert float((onnx_model.encode_text(texts) * model.encode_text(texts)).sum(1).min()) >= 0.999


def test_load_errors(tmp_path, lite_export):
    with pytest.raises(PolymodalError, match="polymodal export onnx"):
        polymodal.load(str(tmp_path / "nothing"), runtime="onnx")
    with pytest.raises(PolymodalError, match="unknown runtime"):
        polymodal.load("lite", runtime="tensorrt")
    with pytest.raises(PolymodalError, match="threads must be a whole number"):
        polymodal.load(str(lite_export[0]), runtime="onnx", threads=-2)
    partial = tmp_path / "partial"  # an export missing its text graph: one line, not onnxruntime's NO_SUCHFILE
    partial.mkdir()
    config = json.loads((lite_export[0] / "onnx_config.json").read_text())
    for f in lite_export[0].iterdir():
        if f.name != config["text"]["file"]:
            (partial / f.name).symlink_to(f)
    with pytest.raises(PolymodalError, match=f"incomplete or damaged export \\({config['text']['file']} is missing"):
        polymodal.load(str(partial), runtime="onnx")


def test_a_graph_this_onnxruntime_cannot_run_is_not_called_damaged(tmp_path, lite_export):
    # an older onnxruntime lacks kernels a newer one exported (1.23 and int8 ConvInteger): exporting again does not
    # help there, a newer onnxruntime does. Tan on doubles has no CPU kernel in any onnxruntime
    from onnx import TensorProto, helper, save

    folder = tmp_path / "export"
    folder.mkdir()
    config = json.loads((lite_export[0] / "onnx_config.json").read_text())
    for f in lite_export[0].iterdir():
        if f.name != config["text"]["file"]:
            (folder / f.name).symlink_to(f)
    x = helper.make_tensor_value_info("input_ids", TensorProto.DOUBLE, [2])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2])
    graph = helper.make_graph([helper.make_node("Tan", ["input_ids"], ["y"])], "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / config["text"]["file"])
    with pytest.raises(PolymodalError, match="cannot run on this onnxruntime .*Tan.*pip install -U onnxruntime") as e:
        polymodal.load(str(folder), runtime="onnx")
    assert "damaged" not in str(e.value)
    (folder / config["text"]["file"]).write_bytes(b"not a graph")  # a broken file is still called damaged
    with pytest.raises(PolymodalError, match="incomplete or damaged export"):
        polymodal.load(str(folder), runtime="onnx")


def test_export_refuses_a_timing_that_measures_nothing(capsys, tmp_path):
    assert cli.main(["export", "onnx", "lite", "--out", str(tmp_path / "x"), "--timing-seconds", "0"]) == 2
    assert "--timing-seconds must be more than 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_export_refuses_models_without_towers(capsys, tmp_path):
    assert cli.main(["export", "onnx", "coco-yesno", "--out", str(tmp_path / "x"), "--variants", ""]) == 2
    err = capsys.readouterr().err
    assert "coco-yesno has no ONNX form (a logistic regression" in err and "Traceback" not in err
    # and asking to run it through onnxruntime does not send the user to that export
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert cli.main(["vqa", str(tmp_path / "x.png"), "is it red?", "--model", "coco-yesno", "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "coco-yesno has no ONNX form" in err and "--runtime torch" in err and "export onnx" not in err


def test_the_onnx_runtime_warns_once_of_a_cut_text_as_pytorch_does(lite_export, caplog):
    model = OnnxEmbeddingModel(lite_export[0])
    with caplog.at_level("WARNING"):
        model.encode_text(["a short caption", "word " * 600])
        model.encode_text(["word " * 600])
    cut = [r for r in caplog.records if "limit of 256 tokens and was cut" in r.getMessage()]
    assert len(cut) == 1 and "(1 in this batch)" in cut[0].getMessage()


def test_serving_through_the_onnx_runtime(lite_export, lite, gallery, db):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    out, _ = lite_export  # db: the gallery indexed with PyTorch (conftest), served with ONNX
    model = OnnxEmbeddingModel(out)
    with TestClient(create_app(model, db)) as c:
        hits = c.post("/v1/search", json={"text": "a rocket on the launch pad", "k": 3}).json()["hits"]
        assert hits[0]["name"] == "rocket.jpg"
        files = {"image": ("cat.jpg", (gallery / "cat.jpg").read_bytes(), "image/jpeg")}
        emb = np.array(c.post("/v1/embed", files=files).json()["vectors"][0])
        assert float(emb @ lite.encode_image([gallery / "cat.jpg"])[0]) > 0.98


VQA_ROWS = 10  # validation questions of the easy-vqa export (each a row of every check and timing it runs)


@pytest.fixture(scope="module")
def easy_vqa_rows(tmp_path_factory):
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    path = tmp_path_factory.mktemp("easy-vqa") / "qa.jsonl"
    rows = [{"image": str(paths[i]), "question": q, "answer": a}
            for q, a, i in list(zip(questions, answers, image_ids))[:VQA_ROWS]]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path, rows


def test_vqa_model_exports_with_parity_and_answers_without_torch(easy_vqa_rows, tmp_path, capsys):
    qa, rows = easy_vqa_rows
    out = tmp_path / "easy-vqa-onnx"
    assert cli.main(["export", "onnx", "easy-vqa", "--out", str(out), "--val-qa", str(qa), "--json",
                     "--timing-seconds", "0.05"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["parity"]["same_top1"] == 1.0 and report["parity"]["min_logit_cosine"] >= 0.999
    assert report["made_with"]["torch"] == __import__("torch").__version__
    assert report["accuracy_onnx"]["accuracy"] == report["accuracy_pytorch"]["accuracy"] >= 0.9
    tried = {(t["graph"], t["variant"]) for t in report["tries"]}
    assert tried == {("grid", "int8_static"), ("grid", "int8_dynamic"), ("question", "int8_dynamic")}
    for t in report["tries"]:  # served variants passed the gate; the others left no file
        served = report["served"][t["graph"]] == f"{t['graph']}.{t['variant']}.onnx"
        assert (t["status"] == "kept") if served else not (out / f"{t['graph']}.{t['variant']}.onnx").exists() or t["status"] == "kept"
    assert report["accuracy_pytorch"]["accuracy"] - report["accuracy_served"]["accuracy"] <= 0.01
    table = (out / "report.md").read_text()  # one row per try, readable beside report.json
    assert all(f"| {t['graph']} | {t['variant']} | {t['status']} |" in table for t in report["tries"])
    assert "answers changed when asked alone" in table
    for t in report["tries"]:  # each validation question asked alone too
        assert t["status"] == "failed" or re.fullmatch(rf"\d+ of {VQA_ROWS}", t["answers_changed_alone"]), t
    script = textwrap.dedent(f"""
        import sys, json
        import polymodal
        m = polymodal.load({str(out)!r}, runtime="onnx")
        r = m.answer({rows[0]['image']!r}, {rows[0]['question']!r})
        c = m.answer({rows[0]['image']!r}, {rows[0]['question']!r}, choices=["yes", "no"])
        p = m.predict_choices([{rows[0]['image']!r}] * 2, [{rows[0]['question']!r}] * 2, [["yes", "no"], ["no", "yes"]])
        print(json.dumps({{"torch": "torch" in sys.modules, "answer": r["answer"], "choice": c["answer"],
                          "chosen": [a for a, _ in p], "same_score": abs(p[0][1] - c["score"]) < 1e-5}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["torch"] is False and got["answer"] == rows[0]["answer"]
    assert got["choice"] in ("yes", "no") and got["chosen"] == [got["choice"]] * 2 and got["same_score"]
    assert cli.main(["eval", "vqa", "--model", str(out), "--runtime", "onnx", "--qa", str(qa)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == report["accuracy_onnx"]["accuracy"]  # the same rows
    # the model's training photos travel with the export: test photos are none of them (null: it records none)
    from polymodal.resources import HERE

    shipped = (HERE / "models" / "easy-vqa" / "training_photos.txt").read_bytes()
    assert (out / "training_photos.txt").read_bytes() == shipped and result["seen_in_training"] == 0
    from polymodal.export.runtime import graph_files, graph_variants, read_export_config

    assert result["variants"] == graph_variants(graph_files(read_export_config(out)))  # which graphs answered
    assert set(result["variants"]) == {"grid", "question", "head"}


def test_export_asks_vqa_models_for_questions(tmp_path, capsys):
    assert cli.main(["export", "onnx", "easy-vqa", "--out", str(tmp_path / "x")]) == 2
    assert "--val-qa" in capsys.readouterr().err


def test_the_fastest_kept_variant_serves(tiny_clip, tmp_path, monkeypatch):
    skip_unless_clip_exports()
    import polymodal.export.onnx_export as onnx_export

    # both variants pass the gate; per tower the first is timed at 3x fp32, the second at 1.5x
    speeds = iter([(300.0, 100.0), (150.0, 100.0)] * 2)
    monkeypatch.setattr(onnx_export, "gate", lambda *a, **k: ("kept", "stub gate: kept"))
    monkeypatch.setattr(onnx_export, "paired_speed", lambda *a, **k: next(speeds))
    out = tmp_path / "out"
    report = export_onnx(tiny_clip, out, _few_photos(), variants=["int8_dynamic", "int8_static"],
                         max_drop_points=100.0, timing_seconds=0.02)  # no fp32 fallback for the pair's accuracy
    for row in report["tries"]:
        skip_unless_int8_loaded(row)
    assert report["served"] == {"image": "int8_dynamic", "text": "int8_dynamic"}
    rows = {(r["tower"], r["variant"]): r for r in report["tries"]}
    for tower in ("image", "text"):
        assert rows[(tower, "int8_static")]["status"] == "kept (not served)"
    # a deployment copies the folder: only the served graphs stay (export_onnx(keep_unserved=True) keeps the rest)
    assert sorted(p.name for p in out.glob("*.onnx")) == ["image.int8_dynamic.onnx", "text.int8_dynamic.onnx"]
    assert report["removed"] == ["image.fp32.onnx", "image.int8_static.onnx", "text.fp32.onnx",
                                 "text.int8_static.onnx"]
    config = json.loads((out / "onnx_config.json").read_text())
    assert config["image"]["file"] == "image.int8_dynamic.onnx"


def test_serve_threads_with_an_export_under_runtime_auto_never_imports_torch(lite_export, db):
    """`serve --model EXPORT --threads N` (the default --runtime auto) imported torch only to set its thread count;
    a torch model still gets the count, set before the server's model thread starts."""
    out, _ = lite_export
    script = textwrap.dedent(f"""
        import sys
        import polymodal.cli_serve as cs
        from polymodal.cli import main

        class Quiet:  # the server started: report instead of serving
            def __init__(self, uvicorn, config, line):
                pass
            def run(self, sockets):
                import sys
                torch = sys.modules.get("torch")
                print("TORCH", torch is not None, torch.get_num_threads() if torch else None)
        cs._announcing_server = Quiet
        assert main(["serve", "--db", {str(db)!r}, "--port", "0", "--model", sys.argv[1], "--threads", "1"]) == 0
    """)
    for model, want in ((str(out), "TORCH False None"), ("lite", "TORCH True 1")):
        result = subprocess.run([sys.executable, "-c", script, model], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "2"})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == want
