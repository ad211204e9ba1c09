"""Stop 54, a VQA model that answers NaN (weights broken by a training that diverged or a damaged file, or a photo that
overflows it): every argmax over NaN logits picks the vocabulary's first answer, so `eval vqa` scored a NaN model at
the rate of its first answer (0.78 on a file answered "yes" 7 times in 9, where the model before was 0.22) and its
--out, `vqa --json` and `vqa --qa` wrote "confidence": NaN, which is no strict JSON; the ONNX export passed parity
and wrote "min_logit_cosine": NaN; /v1/vqa failed to encode its reply; and `train vqa` kept an epoch whose weights
had diverged (finite loss, NaN answers) as RUN/model. Now a question answered as NaN is left out with one warning
and counted as "not_finite" (--strict refuses), a model answering every question so is one error (exit 2), answer()
raises (the server answers 500), export refuses, and training's validation stops the run.
Fast: a tiny fusion encoder (dim 16), its trained weights set to NaN; a white photo overflows the grid features."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa, vqa_accuracy
from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
from polymodal.models.not_finite import NOT_FINITE

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


def _tiny(seed: int) -> FusionEncoder:
    torch.manual_seed(seed)
    return FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, dropout=0.0, answers=["yes", "no", "red"]))


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict JSON readers (JavaScript's, Go's) do."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output: {text[:200]}"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder with photos of 3 colours and a white one, QA rows on them (mostly "yes", as a NaN model answers), a
    multiple-choice row on each photo, and a tiny model saved twice: as made, and with its trained weights NaN."""
    folder = tmp_path_factory.mktemp("vqanan")
    rows = []
    for name, rgb in [*COLOURS.items(), ("white", (255, 255, 255))]:
        Image.new("RGB", (32, 32), rgb).save(folder / f"{name}.png")
        rows += [{"image": f"{name}.png", "question": "is it bright?", "answer": "yes"},
                 {"image": f"{name}.png", "question": "is it dark?", "answer": "no" if name == "white" else "yes"},
                 {"image": f"{name}.png", "question": "which colour?", "answer": "red", "choices": ["red", "no"]}]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = _tiny(54)
    model.save(folder / "ok")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("image_tower.", "text_tower.")):
                p.fill_(float("nan"))
    model.save(folder / "nan")
    return folder


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- a model that answers every question as NaN: one error, nothing written ------------------------------------------

def test_eval_vqa_refuses_a_nan_model_instead_of_scoring_its_first_answer(capsys, data, tmp_path):
    code, out, err = _run(capsys, "eval", "vqa", "--model", data / "nan", "--qa", data / "qa.jsonl", "--quiet",
                          "--out", tmp_path / "items.jsonl")
    assert code == 2 and out == "", out
    assert "as NaN or inf" in err and "all 12 questions" in err and "Traceback" not in err
    assert not (tmp_path / "items.jsonl").exists()
    # the same model before its weights broke is scored as usual
    code, out, _ = _run(capsys, "eval", "vqa", "--model", data / "ok", "--qa", data / "qa.jsonl", "--quiet")
    assert code == 0 and _strict_json(out)["not_finite"] == 0


@pytest.mark.parametrize("extra", [[], ["--json"], ["--json", "--choices", "red,no"]])
def test_vqa_refuses_to_print_an_answer_scored_nan(capsys, data, extra):
    code, out, err = _run(capsys, "vqa", data / "red.png", "is it red?", "--model", data / "nan", *extra)
    assert code == 2 and out == "" and "as NaN or inf, so none can be chosen" in err, (out, err)


def test_answer_from_python_raises_for_a_nan_model(data):
    model = polymodal.load(str(data / "nan"))
    for choices in (None, ["red", "no"]):
        with pytest.raises(PolymodalError, match="NaN or inf"):
            model.answer(data / "red.png", "is it red?", choices=choices)


def test_choices_are_not_ranked_when_other_answers_logits_are_nan(data):
    """One answer's logit NaN ("yes": a diverged head gives some NaN and some huge logits): the softmax over the
    choices red and no alone was finite, so multiple-choice rows still scored a broken model."""
    model = _tiny(7)
    with torch.no_grad():
        model.vqa_head[-1].bias[0] = float("nan")
    with pytest.raises(PolymodalError, match="NaN or inf"):
        model.answer(data / "red.png", "which colour?", choices=["red", "no"])
    mc = [r for r in read_qa(data / "qa.jsonl") if r.choices]
    with pytest.raises(PolymodalError, match="all 4 questions as NaN or inf"):  # stop 55: each was NaN, now an error
        model.predict_choices([r.image for r in mc], [r.question for r in mc], [list(r.choices) for r in mc])
    with pytest.raises(PolymodalError, match="all 12 questions as NaN or inf"):
        vqa_accuracy(model, read_qa(data / "qa.jsonl"))


def test_vqa_qa_file_refuses_a_nan_model(capsys, data, tmp_path):
    code, out, err = _run(capsys, "vqa", "--qa", data / "qa.jsonl", "--model", data / "nan", "--quiet")
    assert code == 2 and out == "" and "all 12 questions" in err


def test_the_server_answers_500_not_nan(data, lite, db, gallery):
    from starlette.testclient import TestClient

    from polymodal.serve.app import create_app

    with TestClient(create_app(lite, db, vqa_model=polymodal.load(str(data / "nan")))) as client:
        reply = client.post("/v1/vqa", files={"image": ("r.png", (data / "red.png").read_bytes(), "image/png")},
                            data={"question": "is it red?"})
    assert reply.status_code == 500
    assert "NaN or inf" in _strict_json(reply.text)["error"]


def test_onnx_export_refuses_a_nan_model_before_making_graphs(data, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from polymodal.export import fusion_export

    def no_graph(*args, **kwargs):
        raise AssertionError("a graph was exported")

    monkeypatch.setattr(fusion_export, "export_graph", no_graph)
    with pytest.raises(PolymodalError, match="NaN or inf on 12 of the 12 --val-qa questions"):
        fusion_export.export_fusion_onnx(polymodal.load(str(data / "nan")), tmp_path, read_qa(data / "qa.jsonl"))


def test_training_never_keeps_an_epoch_whose_answers_are_nan(capsys, data, tmp_path, monkeypatch):
    """A diverging step (as --lr 1e30 gave before --lr was capped): the first step's loss is finite, its update sends
    the weights to 1e30 and every answer logit to NaN. That epoch validated at the rate of the first answer and was
    kept as RUN/model; now validation stops the run."""
    step = torch.optim.AdamW.step

    def diverging(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for param in group["params"]:
                    param.fill_(1e30)
        return loss

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging)
    train = tmp_path / "train.jsonl"
    rows = [json.loads(line) for line in (data / "qa.jsonl").read_text().splitlines()]
    train.write_text("".join(json.dumps({**r, "image": str(data / r["image"])}) + "\n" for r in rows
                             if not r.get("choices")))
    code, out, err = _run(capsys, "train", "vqa", "--qa", train, "--out", tmp_path / "run", "--epochs", 2, "--dim", 16,
                          "--fusion", "concat", "--val-fraction", 0.5, "--quiet")
    assert code == 2 and "validation: the model scores the answers" in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "model").exists()


# -- one photo the model answers as NaN: left out, counted, --strict refuses ------------------------------------------

@pytest.fixture()
def white_overflows(monkeypatch, tmp_path):
    """The grid features of a white photo are inf (as an fp16 overflow makes them): its answers are NaN, its photo
    still readable (the feature cache marks an unreadable photo with NaN, not inf). A cache of its own: the other
    tests' holds the photos' features unchanged."""
    real = FusionEncoder.image_cache_input
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))

    def overflowing(self, pixels):
        out = real(self, pixels)
        white = pixels.float().flatten(1).amin(1) > 0.9  # every channel at its brightest (1.0)
        return torch.where(white[:, None, None], torch.full_like(out, float("inf")), out)

    monkeypatch.setattr(FusionEncoder, "image_cache_input", overflowing)


def test_eval_vqa_leaves_out_a_question_answered_as_nan(capsys, data, tmp_path, caplog, white_overflows):
    items = tmp_path / "items.jsonl"
    code, out, _ = _run(capsys, "eval", "vqa", "--model", data / "ok", "--qa", data / "qa.jsonl", "--quiet",
                        "--out", items)
    assert code == 0
    line = _strict_json(out)
    assert line["not_finite"] == 3 and line["unreadable"] == 0 and line["count"] == 9, line
    assert line["multiple_choice_count"] == 4 - 1  # the white photo's left out too
    said = [r.getMessage() for r in caplog.records if "NaN or inf" in r.getMessage()]
    assert len(said) == 1 and "left out 3 questions" in said[0] and "white.png" in said[0], said
    written = [_strict_json(t) for t in items.read_text().splitlines()]
    assert [i["error"] for i in written if "error" in i] == [NOT_FINITE] * 3
    assert all(i["image"].endswith("white.png") for i in written if "error" in i)
    code, out, err = _run(capsys, "eval", "vqa", "--model", data / "ok", "--qa", data / "qa.jsonl", "--quiet",
                          "--strict")
    assert code == 2 and "--strict: 3 NaN-answered questions" in err


def test_the_same_without_the_feature_cache_and_from_answer(data, white_overflows):
    model = polymodal.load(str(data / "ok"))
    rows = read_qa(data / "qa.jsonl")
    details: list = []
    got = vqa_accuracy(model, rows, cache=False, details=details)
    assert got["not_finite"] == 3 and got["count"] == 9
    json.dumps(details, allow_nan=False)
    assert model.answer(data / "red.png", "is it red?")["answer"] in model.answers
    with pytest.raises(PolymodalError, match="NaN or inf"):
        model.answer(data / "white.png", "is it red?")


def test_vqa_qa_file_names_the_question_answered_as_nan(capsys, data, white_overflows):
    code, out, _ = _run(capsys, "vqa", "--qa", data / "qa.jsonl", "--model", data / "ok", "--quiet")
    assert code == 0
    written = [_strict_json(t) for t in out.splitlines()]
    assert sum(i.get("error") == NOT_FINITE for i in written) == 3 and sum("answer" in i for i in written) == 9
