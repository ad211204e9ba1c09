"""Audit of the ONNX export: the VQA (fusion) export's gate, variant choice and report, the ONNX VQA runtime
(answers, top-k, choices, batching, truncation), the embedding runtime's config reading, and `polymodal export onnx`
options and output. Variant builders and timings are stubbed where a test is about the choice, not the quantizer."""

from __future__ import annotations

import gc
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import polymodal  # noqa: E402
from polymodal import cli  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402

LONG_QUESTION = ("is there a " + "very " * 40 + "big blue circle in the image?")  # > 32 tokens: truncated


@pytest.fixture(scope="module")
def vqa_qa(tmp_path_factory):
    """12 easy-vqa test questions: (jsonl path, QARow list)."""
    easy_vqa = pytest.importorskip("easy_vqa")
    from polymodal.eval.vqa import QARow

    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    picked = list(zip(questions, answers, image_ids))[:12]
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(json.dumps({"image": str(paths[i]), "question": q, "answer": a}) + "\n"
                            for q, a, i in picked))
    return path, [QARow(image=str(paths[i]), question=q, answer=a) for q, a, i in picked]


@pytest.fixture(scope="module")
def vqa_export(easy_vqa, vqa_qa, tmp_path_factory):
    """fp32 graphs only (no variants)."""
    from polymodal.export.fusion_export import export_fusion_onnx

    out = tmp_path_factory.mktemp("vqa") / "fp32"
    report = export_fusion_onnx(easy_vqa, out, vqa_qa[1][:8], variants=[], timing_seconds=0.01)
    return out, report


@pytest.fixture(scope="module")
def onnx_vqa(vqa_export):
    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    return OnnxFusionEncoder(vqa_export[0])


def _copy_variant(src, dst, calibration=None):
    shutil.copyfile(src, dst)
    return dst


def _zeroed_variant(src, dst, calibration=None):
    """A 'variant' whose output is all zeros (a quantizer gone wrong): answers no longer depend on that graph."""
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    name = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [f"{o}_raw" if o == name else o for o in node.output]
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "audit_zero"))
    m.graph.node.append(helper.make_node("Mul", [f"{name}_raw", "audit_zero"], [name]))
    onnx.save(m, str(dst))
    return dst


def _stubbed_export(model, out, rows, builders: dict, speeds: list, **kwargs):
    """export_fusion_onnx with variant builders and paired_speed replaced: builders {variant: fn(graph) -> builder},
    speeds: the (variant, fp32) items/s of each try, in order."""
    import polymodal.export.onnx_export as onnx_export
    import polymodal.export.variants as V
    from polymodal.export.fusion_export import export_fusion_onnx

    timings = iter(speeds)
    with pytest.MonkeyPatch.context() as mp:
        for name, builder in builders.items():
            mp.setattr(V, name, builder)
        mp.setattr(onnx_export, "paired_speed", lambda *a, **k: next(timings))
        return export_fusion_onnx(model, out, rows, timing_seconds=0.01, **kwargs)


@pytest.fixture(scope="module")
def choice_export(easy_vqa, vqa_qa, tmp_path_factory):
    """All variants are exact copies; grid: int8_static 3x and int8_dynamic 1.5x fp32 (both kept), question:
    int8_dynamic 1.0x (not faster: rejected). -> (out, report, (variant file, OnnxFusionEncoders alive) at each
    variant's build: test_s53_lowmem's count, made in this export rather than in one of its own)."""
    from test_s53_lowmem import _count_sessions_at_each_variant

    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    out = tmp_path_factory.mktemp("vqa") / "choice"
    gc.freeze()  # as conftest's young_heap: the count's gc.collect() scans only what the export made
    try:
        with pytest.MonkeyPatch.context() as mp:  # the copying builders it patches are the variants here
            built = _count_sessions_at_each_variant(mp, OnnxFusionEncoder, lambda fp32, out: out.name)
            report = _stubbed_export(easy_vqa, out, vqa_qa[1][:8], {}, [(300.0, 100.0), (150.0, 100.0), (100.0, 100.0)])
    finally:
        gc.unfreeze()
    return out, report, built


@pytest.fixture(scope="module")
def bad_variant_export(easy_vqa, vqa_qa, tmp_path_factory):
    """int8_dynamic only; the grid 'variant' outputs zeros, the question one is a copy; both 2x fp32; max drop 100
    points, so the bad grid variant is kept and served; keep_unserved: the fp32 graphs they replace stay."""
    out = tmp_path_factory.mktemp("vqa") / "bad"

    def dynamic(src, dst, calibration=None):
        return (_zeroed_variant if src.name == "grid.onnx" else _copy_variant)(src, dst)

    report = _stubbed_export(easy_vqa, out, vqa_qa[1][:8], {"int8_dynamic": dynamic}, [(200.0, 100.0)] * 2,
                             variants=["int8_dynamic"], max_drop_points=100.0, keep_unserved=True)
    return out, report


# --- the VQA export -------------------------------------------------------------------------------------------


def test_vqa_export_refuses_a_model_without_answers_and_no_questions(easy_vqa, vqa_qa, tmp_path, monkeypatch):
    from polymodal.export.fusion_export import export_fusion_onnx

    with pytest.raises(PolymodalError, match="--val-qa"):
        export_fusion_onnx(easy_vqa, tmp_path / "a", [], variants=[])
    with pytest.raises(PolymodalError, match="no bf16 variant; choose from int8_dynamic, int8_static"):
        export_fusion_onnx(easy_vqa, tmp_path / "c", vqa_qa[1][:2], variants=["int8_dynamic", "bf16"])
    assert not (tmp_path / "c").exists()
    monkeypatch.setattr(easy_vqa, "answers", [])
    with pytest.raises(PolymodalError, match="no VQA head"):
        export_fusion_onnx(easy_vqa, tmp_path / "b", vqa_qa[1][:2], variants=[])


def test_vqa_parity_fails_when_one_row_drifts_though_its_top1_holds(easy_vqa, vqa_qa, tmp_path, monkeypatch):
    import polymodal.export.fusion_runtime as fr
    from polymodal.export.fusion_export import _unit, export_fusion_onnx

    real = fr.OnnxFusionEncoder.logits
    seen = {}

    def drifted(self, images, questions, batch_size=32):
        x = real(self, images, questions, batch_size).copy()
        row = x[1]  # push one row's lowest logit further down: same top-1, cosine ~0.99
        row[row.argmin()] -= 0.15 * np.linalg.norm(row)
        seen["cosine"] = float((_unit(real(self, images, questions)) * _unit(x)).sum(1).min())
        return x

    monkeypatch.setattr(fr.OnnxFusionEncoder, "logits", drifted)
    with pytest.raises(PolymodalError, match="parity failed"):
        export_fusion_onnx(easy_vqa, tmp_path / "out", vqa_qa[1][:4], variants=[])
    assert 0.95 < seen["cosine"] < 0.999  # the case is the one meant: only the cosine is off


def test_vqa_export_tries_only_the_variants_asked_for(bad_variant_export, choice_export):
    assert [(t["graph"], t["variant"]) for t in bad_variant_export[1]["tries"]] == \
        [("grid", "int8_dynamic"), ("question", "int8_dynamic")]
    assert [(t["graph"], t["variant"]) for t in choice_export[1]["tries"]] == \
        [("grid", "int8_static"), ("grid", "int8_dynamic"), ("question", "int8_dynamic")]


def test_vqa_fastest_kept_variant_serves_and_rejected_ones_leave_no_file(choice_export):
    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    out, report, _ = choice_export
    status = {(t["graph"], t["variant"]): t["status"] for t in report["tries"]}
    assert status == {("grid", "int8_static"): "kept", ("grid", "int8_dynamic"): "kept (not served)",
                      ("question", "int8_dynamic"): "rejected"}
    assert report["served"] == {"grid": "grid.int8_static.onnx", "question": "question.onnx", "head": "head.onnx"}
    config = json.loads((out / "onnx_config.json").read_text())
    assert config["files"] == {"grid": "grid.int8_static.onnx"}
    assert OnnxFusionEncoder(out).files["grid"] == "grid.int8_static.onnx"  # the runtime runs what the config says
    # what is not served is deleted: the fp32 grid graph and the kept but slower variant; rejected ones never stay
    assert report["removed"] == ["grid.int8_dynamic.onnx", "grid.onnx"]
    assert sorted(p.name for p in out.glob("*.onnx")) == ["grid.int8_static.onnx", "head.onnx", "question.onnx"]
    assert "Deleted after choosing, not served: grid.int8_dynamic.onnx, grid.onnx" in (out / "report.md").read_text()


def test_vqa_export_keeps_the_graphs_it_does_not_serve_when_asked(bad_variant_export):
    out, report = bad_variant_export  # both variants kept and served, keep_unserved=True
    assert report["removed"] == [] and "Deleted after" not in (out / "report.md").read_text()
    assert sorted(p.name for p in out.glob("*.onnx")) == ["grid.int8_dynamic.onnx", "grid.onnx", "head.onnx",
                                                          "question.int8_dynamic.onnx", "question.onnx"]


def test_vqa_export_holds_no_earlier_variants_sessions_while_a_variant_is_built(choice_export):
    """Each try loads the whole export (a session per graph): the fp32 export's own encoder is the one alive at each
    build, a kept variant's no more than a rejected one's (test_s53_lowmem has the embedding export's twin)."""
    assert choice_export[2] == [("grid.int8_static.onnx", 1), ("grid.int8_dynamic.onnx", 1),
                                ("question.int8_dynamic.onnx", 1)]


def test_vqa_report_drop_and_served_accuracy_come_from_the_served_graphs(bad_variant_export):
    out, report = bad_variant_export
    grid = next(t for t in report["tries"] if t["graph"] == "grid")
    acc_pt = report["accuracy_pytorch"]["accuracy"]
    assert grid["accuracy"] < acc_pt  # zeroed grid tokens: answers no longer look at the image
    assert grid["drop_points"] == round(100 * (acc_pt - grid["accuracy"]), 2) > 0
    assert grid["status"] == "kept" and report["served"]["grid"] == "grid.int8_dynamic.onnx"
    assert report["accuracy_served"]["accuracy"] < report["accuracy_onnx"]["accuracy"]
    assert report["accuracy_served"]["accuracy"] == grid["accuracy"]  # question variant is exact
    # report.md: one row per try, cells in the header's order
    table = (out / "report.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| graph |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    row = next(line for line in table if line.startswith("| grid | int8_dynamic |"))
    cells = dict(zip(cols, (c.strip() for c in row.strip("|").split("|"))))
    assert cells["accuracy"] == str(grid["accuracy"]) and cells["drop (points)"] == str(grid["drop_points"])
    assert cells["x fp32 ORT"] == "2.0" and cells["status"] == "kept"


def test_vqa_fallback_when_a_variant_is_over_the_drop_limit(easy_vqa, vqa_qa, tmp_path):
    out = tmp_path / "out"
    report = _stubbed_export(easy_vqa, out, vqa_qa[1][:8], {"int8_dynamic": _zeroed_variant}, [(200.0, 100.0)] * 2,
                             variants=["int8_dynamic"])
    for t in report["tries"]:
        assert t["status"] == "rejected" and "over the 1-point limit" in t["reason"] and t["drop_points"] > 1
        assert not (out / f"{t['graph']}.int8_dynamic.onnx").exists()
    assert report["served"] == {"grid": "grid.onnx", "question": "question.onnx", "head": "head.onnx"}
    assert "files" not in json.loads((out / "onnx_config.json").read_text())
    assert report["accuracy_served"] == report["accuracy_onnx"]


def test_a_variant_failing_with_an_empty_message_is_reported_not_raised(easy_vqa, vqa_qa, tmp_path):
    # str(MemoryError()) is "": its first line used to raise IndexError and crash the whole export
    def no_memory(src, dst, calibration=None):
        raise MemoryError()

    report = _stubbed_export(easy_vqa, tmp_path / "out", vqa_qa[1][:4], {"int8_dynamic": no_memory}, [],
                             variants=["int8_dynamic"])
    assert [t["status"] for t in report["tries"]] == ["failed", "failed"]
    assert report["tries"][0]["reason"] == "failed here: MemoryError"


# --- the ONNX VQA runtime -------------------------------------------------------------------------------------


def test_onnx_vqa_logits_match_pytorch_on_mixed_lengths_and_truncated_questions(easy_vqa, onnx_vqa, vqa_qa):
    from polymodal.export.fusion_export import _torch_logits, _unit

    rows = vqa_qa[1][:6]
    images = [r.image for r in rows] + [rows[0].image]
    questions = [r.question for r in rows] + [LONG_QUESTION]
    assert len(onnx_vqa.tokenizer([LONG_QUESTION])["input_ids"][0]) == easy_vqa.text_tower.max_length
    ref, got = _torch_logits(easy_vqa, images, questions), onnx_vqa.logits(images, questions, batch_size=4)
    assert got.shape == (len(images), len(easy_vqa.answers))
    assert float((_unit(ref) * _unit(got)).sum(1).min()) > 0.9999
    assert np.allclose(ref, got, atol=2e-3)


def test_onnx_vqa_one_image_and_question_string_is_one_row(onnx_vqa, vqa_qa):
    r = vqa_qa[1][0]
    one = onnx_vqa.logits(r.image, r.question)
    assert one.shape == (1, len(onnx_vqa.answers))
    assert np.allclose(one, onnx_vqa.logits([r.image], [r.question]), atol=1e-5)
    assert onnx_vqa.predict(r.image, r.question)[0][0] == r.answer
    with pytest.raises(PolymodalError, match="batch_size"):  # like the PyTorch model (was a raw ValueError)
        onnx_vqa.predict(r.image, r.question, batch_size=0)


def test_onnx_vqa_answer_and_top_k_match_pytorch(easy_vqa, onnx_vqa, vqa_qa):
    r = vqa_qa[1][0]
    for k in (1, 2, 5):
        got, ref = onnx_vqa.answer(r.image, r.question, top_k=k), easy_vqa.answer(r.image, r.question, top_k=k)
        assert [a for a, _ in got["alternatives"]] == [a for a, _ in ref["alternatives"]]
        assert np.allclose([s for _, s in got["alternatives"]], [s for _, s in ref["alternatives"]], atol=1e-3)
        assert got["answer"] == ref["answer"] == r.answer
    for model in (onnx_vqa, easy_vqa):  # top_k 0 is a mistake in both runtimes, not a silent 1
        with pytest.raises(PolymodalError, match="top_k must be a whole number of at least 1"):
            model.answer(r.image, r.question, top_k=0)
    with pytest.raises(PolymodalError, match="empty"):
        onnx_vqa.answer(r.image, "   ")


def test_onnx_vqa_choices_are_renormalised_ranked_and_cut_like_pytorch(easy_vqa, onnx_vqa, vqa_qa):
    r = next(r for r in vqa_qa[1] if r.answer not in ("yes", "no"))  # a shape or colour question
    choices = ["Circle", "rectangle", "triangle", "circle."]  # spellings: the first wins
    got = onnx_vqa.answer(r.image, r.question, choices=choices)
    ref = easy_vqa.answer(r.image, r.question, choices=choices)
    assert [a for a, _ in got["alternatives"]] == [a for a, _ in ref["alternatives"]]
    assert np.allclose([s for _, s in got["alternatives"]], [s for _, s in ref["alternatives"]], atol=1e-3)
    assert abs(sum(s for _, s in got["alternatives"]) - 1) < 1e-5  # softmax over the choices only
    assert got["score"] >= got["alternatives"][-1][1]
    one = onnx_vqa.answer(r.image, r.question, choices=choices, top_k=1)
    assert one["alternatives"] == got["alternatives"][:1]
    # a choice outside the vocabulary scores 0 (with a warning), the others keep their full-vocabulary probability,
    # as in the PyTorch model without an ITM head; none known is an error in both
    mixed = ["yes", "purple", "circle"]
    got, ref = onnx_vqa.answer(r.image, r.question, choices=mixed), easy_vqa.answer(r.image, r.question, choices=mixed)
    assert [a for a, _ in got["alternatives"]] == [a for a, _ in ref["alternatives"]]
    assert np.allclose([s for _, s in got["alternatives"]], [s for _, s in ref["alternatives"]], atol=1e-3)
    assert dict(got["alternatives"])["purple"] == 0.0
    assert onnx_vqa.predict_choices([r.image], [r.question], [mixed])[0] == pytest.approx(got["alternatives"][0])
    for model in (onnx_vqa, easy_vqa):
        with pytest.raises(PolymodalError, match="knows none of the choices"):
            model.answer(r.image, r.question, choices=["purple", "banana"])
    # a lone choice (or spellings of one): its full-vocabulary probability in both, not a softmax over one (1.0)
    wrong = next(a for a in ("circle", "rectangle", "triangle") if a != r.answer)
    got, ref = onnx_vqa.answer(r.image, r.question, choices=[wrong, wrong.upper()]), \
        easy_vqa.answer(r.image, r.question, choices=[wrong])
    assert got["score"] == pytest.approx(ref["score"], abs=1e-3) and ref["score"] < 0.5


def test_load_onnx_picks_the_vqa_runtime_and_passes_threads(vqa_export):
    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    m = polymodal.load(str(vqa_export[0]), runtime="onnx", threads=1)
    assert isinstance(m, OnnxFusionEncoder)
    assert m.grid.get_session_options().intra_op_num_threads == 1
    # easy-vqa has no ITM head: no match graph, and asking for match scores says why there are none
    out, report = vqa_export
    assert m.match is None and not (out / "match.onnx").exists() and "match" not in report["served"]
    assert "match_max_abs_diff" not in report["parity"]
    with pytest.raises(PolymodalError, match="exported without an ITM head"):
        m.match_scores(["x.png"], ["a statement"])


# --- the embedding runtime: config reading, preprocessing, truncation --------------------------------------------


def export_tiny_clip(tmp):
    """(a tiny random CLIP checkpoint's model, its fp32 ONNX export folder tmp/onnx)."""
    from conftest import skip_unless_clip_exports
    from test_clip_checkpoints import make_tiny_clip

    from polymodal.export.onnx_export import export_onnx, validation_set
    from polymodal.models.clip import load_clip

    skip_unless_clip_exports()
    model = load_clip(make_tiny_clip(tmp / "tiny-clip"))
    export_onnx(model, tmp / "onnx", validation_set(None), variants=[], timing_seconds=0.01)
    return model, tmp / "onnx"


@pytest.fixture(scope="module")
def tiny_clip_export(tmp_path_factory):
    return export_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_embedding_runtime_matches_pytorch_scores_and_truncation(tiny_clip_export, gallery):
    from polymodal.export.runtime import OnnxEmbeddingModel

    model, out = tiny_clip_export
    m = OnnxEmbeddingModel(out, threads=1)
    assert m.transform == model.transform and m.logit_scale == pytest.approx(float(model.logit_scale))
    assert m.image_session.get_session_options().intra_op_num_threads == 1
    images = sorted(gallery.glob("*.jpg"))[:3]
    assert float((m.encode_image(images) * model.encode_image(images)).sum(1).min()) >= 0.999
    long = ["cat dog " * 40]  # far past max_length 16
    assert m.tokenizer(long)["input_ids"].shape[1] == 16
    assert float((m.encode_text(long) * model.encode_text(long)).sum(1).min()) >= 0.999
    labels = ["cat", "dog", "car"]
    got, ref = m.classify(images, labels), model.classify(images, labels)
    for g, r in zip(got, ref):
        assert [lab for lab, _ in g] == [lab for lab, _ in r]
        assert np.allclose([s for _, s in g], [s for _, s in r], atol=2e-3)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"'])
def test_a_broken_export_config_is_one_clear_error(tmp_path, text):
    from polymodal.export.runtime import load_onnx, read_export_config

    (tmp_path / "onnx_config.json").write_text(text)
    for call in (read_export_config, load_onnx):
        with pytest.raises(PolymodalError, match="polymodal export onnx"):
            call(tmp_path)


# --- `polymodal export onnx` options and output ------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [(["--val-limit", "1"], "--val-limit"),
                                           (["--variants", "int8_dynamic,int4"], "unknown variants"),
                                           (["--variants", "int8_dynamic,bf16"], "VQA exports have no bf16")])
def test_cli_export_rejects_bad_options_before_loading(tmp_path, capsys, vqa_qa, args, message):
    assert cli.main(["export", "onnx", "easy-vqa", "--out", str(tmp_path / "x"), "--val-qa", str(vqa_qa[0]),
                     *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_val_qa_refuses_an_embedding_model(tmp_path, capsys, vqa_qa, lite, monkeypatch):
    monkeypatch.setattr(polymodal, "load", lambda name, **kw: lite if name == "lite" else pytest.fail(name))
    assert cli.main(["export", "onnx", "lite", "--out", str(tmp_path / "x"), "--val-qa", str(vqa_qa[0]),
                     "--variants", ""]) == 2
    assert "--val-qa is for VQA models" in capsys.readouterr().err


def test_cli_vqa_export_json_then_table_into_the_same_folder(tmp_path, capsys, vqa_qa, easy_vqa, monkeypatch):
    import polymodal.export.onnx_export as onnx_export
    import polymodal.export.variants as V

    monkeypatch.setattr(polymodal, "load", lambda name, **kw: easy_vqa if name == "easy-vqa" else pytest.fail(name))

    out = tmp_path / "vqa-onnx"
    base = ["export", "onnx", "easy-vqa", "--out", str(out), "--val-qa", str(vqa_qa[0]), "--timing-seconds", "0.01"]
    assert cli.main([*base, "--val-limit", "5", "--variants", "", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["out"] == str(out) and report["questions"] == 5 and report["tries"] == []
    assert "polymodal:" not in captured.err  # --json: no progress lines
    # again into the same folder (an earlier export's files are replaced), as a table, one stubbed variant
    monkeypatch.setattr(V, "int8_dynamic", _copy_variant)
    monkeypatch.setattr(onnx_export, "paired_speed", lambda *a, **k: (100.0, 100.0))
    assert cli.main([*base, "--val-limit", "4", "--variants", "int8_dynamic", "--max-drop-points", "7"]) == 0
    captured = capsys.readouterr()
    assert "polymodal: parity and accuracy on 4 validation questions" in captured.err
    assert "| grid | int8_dynamic | rejected |" in captured.out and "(within the 7-point limit)" in captured.out
    hint = captured.out.strip().splitlines()[-1]  # an export folder needs no --runtime (auto picks onnxruntime)
    assert f"`polymodal vqa IMAGE QUESTION --model {out}`" in hint and "runtime" not in hint
    assert json.loads((out / "report.json").read_text())["questions"] == 4


def test_each_export_kind_serves_the_files_its_config_names(tmp_path):
    from polymodal.export.runtime import drop_unserved, graph_files

    embedding = {"type": "onnx_embedding", "image": {"file": "image.fp32.onnx"}, "text": {"file": "text.int8_dynamic.onnx"}}
    captioner = {"type": "onnx_captioner", "files": {"step": "step.int8_dynamic.onnx"}}
    vqa = {"type": "onnx_fusion_encoder"}
    assert graph_files(embedding) == {"image": "image.fp32.onnx", "text": "text.int8_dynamic.onnx"}
    assert graph_files(captioner) == {"prefix": "prefix.onnx", "step": "step.int8_dynamic.onnx"}
    assert graph_files(vqa) == {"grid": "grid.onnx", "question": "question.onnx", "head": "head.onnx"}
    for name in ("prefix.onnx", "step.onnx", "step.int8_dynamic.onnx", "tokenizer.json", "report.json",
                 "detector.onnx", "step.mine.onnx"):
        (tmp_path / name).write_bytes(b"x")
    assert drop_unserved(tmp_path, captioner) == ["step.onnx"]
    # only graphs an export writes are ever deleted: the user's own files in the folder stay (the Python API does
    # not stage the export as the CLI does)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detector.onnx", "prefix.onnx", "report.json",
                                                          "step.int8_dynamic.onnx", "step.mine.onnx", "tokenizer.json"]
    (tmp_path / "image.onnx").write_bytes(b"x")  # an embedding export never writes this name: not its to delete
    assert drop_unserved(tmp_path, embedding) == []


def test_an_export_gate_on_few_photos_says_it_can_hardly_refuse(tmp_path, caplog):
    import json

    from PIL import Image

    from polymodal.export.onnx_export import validation_set

    rows = []
    for name, colour in (("a", "red"), ("b", "blue")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / f"{name}.png")
        rows.append(json.dumps({"image": f"{name}.png", "caption": f"a {colour} square"}) + "\n")
    (tmp_path / "p.jsonl").write_text("".join(rows))
    with caplog.at_level("WARNING"):
        assert len(validation_set(tmp_path / "p.jsonl").images) == 2
    assert "--val-pairs has 2 images: R@5 over so few is nearly always 1.0" in caplog.text


def _shape_cells(path) -> np.ndarray:
    """[7, 7] bool: the cells of a 7x7 grid over an easy-vqa image (64 px, a shape on a plain background) that hold
    part of the shape."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    mask = np.abs(img - img[0, 0]).sum(-1) > 30
    e = np.linspace(0, img.shape[0], 8).round().astype(int)
    return np.array([[mask[e[r]:e[r + 1], e[c]:e[c + 1]].any() for c in range(7)] for r in range(7)])


def test_an_onnx_vqa_export_explains_by_occlusion(vqa_export, onnx_vqa, tmp_path, capsys):
    """ONNX VQA had no explain() (`vqa --explain` was refused). Its occlusion map of the answer's log-probability
    peaks on the shape for most "what shape" questions (measured on 40: 0.78 of peaks, the PyTorch model's attention
    0.82, a random map 0.20)."""
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    rows = [(str(paths[i]), q) for q, a, i in zip(questions, answers, image_ids)
            if a in ("circle", "rectangle", "triangle")][:10]
    peaks = 0
    for path, question in rows:
        heat = onnx_vqa.explain(path, question)
        assert heat.shape == (7, 7) and heat.dtype == np.float32 and heat.min() >= 0 and heat.max() == 1.0
        peaks += bool(_shape_cells(path).ravel()[heat.argmax()])
    assert peaks >= 6, peaks
    with pytest.raises(PolymodalError, match="exported without an ITM head"):
        onnx_vqa.explain(rows[0][0], rows[0][1], answer="a banana")
    out = tmp_path / "heat.png"
    assert cli.main(["vqa", rows[0][0], rows[0][1], "--model", str(vqa_export[0]), "--explain", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as img, Image.open(rows[0][0]) as photo:  # easy-VQA's 64x64 photo, 4 times (stop 48)
        assert img.width == photo.width * 4 == 256 and img.height > photo.height * 4  # and the strip below it
    assert f"heat map: {out}" in capsys.readouterr().out
