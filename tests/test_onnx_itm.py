"""A VQA model with an ITM head exports it as match.onnx: the ONNX runtime then scores multiple-choice candidates
outside the answer vocabulary as the PyTorch model does (before, they scored 0 and a list of unknown choices was
refused)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("easy_vqa")

from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.eval.vqa import QARow  # noqa: E402
from polymodal.export.fusion_export import export_fusion_onnx  # noqa: E402
from polymodal.export.fusion_runtime import OnnxFusionEncoder  # noqa: E402

CHOICES = [["circle", "a purple blob", "two dogs"], ["a purple blob", "two dogs"], ["no", "yes"]]


@pytest.fixture(scope="module")
def rows():
    import easy_vqa

    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    rows, seen = [], set()
    for q, a, i in zip(questions, answers, image_ids):  # six images: a row scored on another's image shows
        if i not in seen:
            seen.add(i)
            rows.append(QARow(image=str(paths[i]), question=q, answer=a))
        if len(rows) == 6:
            return rows


@pytest.fixture(scope="module")
def itm_model(easy_vqa):
    model = copy.deepcopy(easy_vqa)
    torch.manual_seed(0)
    model.add_itm_head()  # random, but a head: parity is about the graph, not what the head learned
    with torch.no_grad():
        model.itm[1].weight.mul_(20)  # spread the match probabilities so that rankings are not ties at 0.5
    return model.eval()


@pytest.fixture(scope="module")
def itm_export(itm_model, rows, tmp_path_factory):
    """The export, its int8_dynamic 'variants' copies of the fp32 grid and question graphs timed at 2x fp32 (kept and
    served): what the served graphs compute is the fp32 graphs', and the report has the served graphs' match figure
    (one export for the fp32 and the served-variant checks)."""
    import shutil

    import polymodal.export.onnx_export as onnx_export
    import polymodal.export.variants as V

    out = tmp_path_factory.mktemp("itm") / "export"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(V, "int8_dynamic", lambda src, dst, calibration=None: shutil.copyfile(src, dst))
        mp.setattr(onnx_export, "paired_speed", lambda *a, **k: (200.0, 100.0))
        report = export_fusion_onnx(itm_model, out, rows, variants=["int8_dynamic"], timing_seconds=0.01)
    return out, report


def test_the_export_writes_a_parity_checked_match_graph(itm_export):
    out, report = itm_export
    assert (out / "match.onnx").is_file() and report["served"]["match"] == "match.onnx"
    assert json.loads((out / "onnx_config.json").read_text())["itm_head"] is True
    assert 0 <= report["parity"]["match_max_abs_diff"] <= 1e-3
    assert "ITM match probability within" in (out / "report.md").read_text()


def test_onnx_ranks_unknown_choices_as_pytorch_does(itm_model, itm_export, rows):
    onnx_model = OnnxFusionEncoder(itm_export[0])
    for row in rows[:2]:
        for choices in CHOICES:
            want = itm_model.answer(row.image, row.question, choices=choices)["alternatives"]
            got = onnx_model.answer(row.image, row.question, choices=choices)["alternatives"]
            assert [c for c, _ in got] == [c for c, _ in want], (row.question, choices)
            assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-3)
    assert onnx_model.check_choices(["a purple blob"])[1] == ""  # scored by the match graph: nothing to warn of
    images, questions = [r.image for r in rows], [r.question for r in rows]
    per_row = [CHOICES[i % len(CHOICES)] for i in range(len(rows))]
    want = itm_model.predict_choices(images, questions, per_row)
    got = onnx_model.predict_choices(images, questions, per_row, batch_size=4)  # rows across two batches
    assert [a for a, _ in got] == [a for a, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-3)


def test_match_scores_are_the_pytorch_itm_probabilities(itm_model, itm_export, rows):
    onnx_model = OnnxFusionEncoder(itm_export[0])
    texts = [f"{r.question} {r.answer}" for r in rows[:4]]
    got = onnx_model.match_scores([r.image for r in rows[:4]], texts)
    with torch.inference_mode():
        want = [float(torch.sigmoid(itm_model.itm_logits(itm_model.encode_images([r.image]),
                                                          *itm_model.encode_questions([t]))))
                for r, t in zip(rows[:4], texts)]
    assert got.shape == (4,) and np.allclose(got, want, atol=1e-3)
    assert got.std() > 0.01  # not a constant: the scores depend on the rows


def test_a_drifting_match_graph_fails_the_export(itm_model, rows, tmp_path, monkeypatch):
    real = OnnxFusionEncoder.match_scores
    monkeypatch.setattr(OnnxFusionEncoder, "match_scores", lambda self, i, t: real(self, i, t) + 0.01)
    with pytest.raises(PolymodalError, match="ITM graph parity failed"):
        export_fusion_onnx(itm_model, tmp_path / "x", rows[:2], variants=[], timing_seconds=0.01)


def test_served_int8_tower_graphs_get_a_match_figure_in_the_report(itm_export):
    """An int8 grid or question graph feeds the match graph too: the report gives how far its scores moved (the VQA
    accuracy gate decides; here the 'variants' are copies of the fp32 graphs, kept as faster: itm_export)."""
    out, report = itm_export
    assert report["served"]["grid"] == "grid.int8_dynamic.onnx" and report["served"]["match"] == "match.onnx"
    assert 0 <= report["parity"]["match_served_max_abs_diff"] <= 1e-3
    assert "with the served int8 graphs" in (out / "report.md").read_text()
    assert (out / "match.onnx").is_file()
