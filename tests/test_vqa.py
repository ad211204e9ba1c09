"""VQA core: a fusion encoder trained end to end on a tiny question set over the sample gallery (CLI, cache, save and
load, answer/choices, explain heat maps, eval JSON), and the built-in easy-vqa model on real easy-VQA questions."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import polymodal
from polymodal import cli
from polymodal.apps.explain import save_heatmap
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.eval.vqa import read_qa, vqa_accuracy
from polymodal.fusion import build_fusion
from polymodal.models.fusion_encoder import FusionEncoder, is_fusion_encoder_folder
from polymodal.resources import HERE
from conftest import cli_json

NAMES = sorted({**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS})


def write_qa(path, names):
    """Per photo: what is it, and one yes and one no question (about the photo 5 names on)."""
    with path.open("w") as f:
        for i, name in enumerate(names):
            other = NAMES[(i + 5) % len(NAMES)]
            for q, a in (("what is in the picture?", name), (f"is this a {name}?", "yes"), (f"is this a {other}?", "no")):
                f.write(json.dumps({"image": f"{name}.jpg", "question": q, "answer": a}) + "\n")
    return path


@pytest.fixture(scope="module")
def qa_file(gallery):
    """All 15 photos: 45 rows (15 answers), majority answer 1/3."""
    return write_qa(gallery / "qa.jsonl", NAMES)


@pytest.fixture(scope="module")
def trained(qa_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("vqa-run")
    return out, cli_json(["train", "vqa", "--qa", str(qa_file), "--val-qa", str(qa_file), "--out", str(out), "--quiet",
                          "--fusion", "cross_attention", "--dim", "64", "--epochs", "30", "--lr", "3e-3",
                          "--batch-size", "6", "--warmup-steps", "5", "--patience", "0", "--dropout", "0"])


def test_training_learns_and_saves_a_small_loadable_model(trained):
    trained, result = trained
    val = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    assert val[-1]["train_loss"] < val[0]["train_loss"]
    assert result["best"]["val/accuracy"] > 0.8  # chance (the majority answer) is 1/3
    folder = trained / "model"
    assert is_fusion_encoder_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["type"] == "fusion_encoder" and set(config["answers"]) == {*NAMES, "yes", "no"}
    assert (folder / "model.safetensors").stat().st_size < 3_000_000  # heads and fusion only, not the towers


@pytest.fixture(scope="module")
def model(trained):
    m = polymodal.load(str(trained[0] / "model"))
    assert isinstance(m, FusionEncoder)
    return m


def test_save_load_round_trip_gives_identical_logits(model, tmp_path, gallery):
    again = polymodal.load(str(model.save(tmp_path / "copy")))
    assert again.answers == model.answers and again.config.fusion_options == {"query": 1}
    imgs = model.encode_images([gallery / "cat.jpg"])
    states, mask = model.encode_questions(["what is in the picture?"])
    with torch.no_grad():
        assert torch.allclose(model.vqa_logits(imgs, states, mask), again.vqa_logits(imgs, states, mask), atol=1e-5)


def test_answer_and_choices(model, gallery):
    out = model.answer(gallery / "cat.jpg", "what is in the picture?", top_k=3)
    assert out["answer"] == "cat" and len(out["alternatives"]) == 3
    assert out["alternatives"][0] == (out["answer"], out["score"])
    scores = [s for _, s in out["alternatives"]]
    assert scores == sorted(scores, reverse=True) and 0 < out["score"] <= 1

    picked = model.answer(gallery / "rocket.jpg", "what is in the picture?", choices=["cat", "Rocket", "moon"])
    assert picked["answer"] == "Rocket"  # the caller's spelling comes back
    assert abs(sum(s for _, s in picked["alternatives"]) - 1) < 1e-5  # softmax over the candidates
    # a candidate outside the vocabulary scores 0 without an ITM head; in-vocabulary ones keep their probability
    mixed = model.answer(gallery / "rocket.jpg", "what is in the picture?", choices=["spaceship", "rocket"])
    assert mixed["answer"] == "rocket" and dict(mixed["alternatives"])["spaceship"] == 0.0
    with pytest.raises(polymodal.PolymodalError):
        model.answer(gallery / "cat.jpg", "   ")


def test_itm_head_scores_candidates_outside_the_vocabulary(model, gallery):
    config = dataclasses.replace(model.config, itm_head=True)
    m = FusionEncoder(config).eval()
    m.load_state_dict(model.trained_state(), strict=False)  # everything but the fresh ITM head
    asked = []
    encode = m.encode_questions
    m.encode_questions = lambda texts, *a, **k: asked.append(list(texts)) or encode(texts, *a, **k)
    out = m.answer(gallery / "cat.jpg", "what is in the picture?", choices=["cat", "kitten"])
    assert 0 < dict(out["alternatives"])["kitten"] < 1  # sigmoid of the ITM logit
    assert ["what is in the picture? kitten"] in asked  # ITM reads the question with the candidate appended


def test_padding_in_a_batch_never_changes_a_questions_logits(model, gallery):
    # a short question batched with a longer one is padded; its logits must equal those it gets alone
    imgs = model.encode_images([gallery / "cat.jpg"])
    short, long = "what is it?", "is this a photo of a small grey cat sitting on a soft red blanket at home?"
    with torch.no_grad():
        alone = model.vqa_logits(imgs, *model.encode_questions([short]), torch.zeros(1, dtype=torch.long))
        states, mask = model.encode_questions([short, long])
        assert not mask[0].all()  # the short one really is padded
        batched = model.vqa_logits(imgs, states, mask, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(batched[0], alone[0], atol=1e-4, rtol=0)


def test_predict_and_eval_accuracy(model, qa_file):
    rows = read_qa(qa_file)
    result = vqa_accuracy(model, rows)
    assert result["accuracy"] > 0.8 and set(result["per_type"]) == {"yes/no", "other"}
    assert result["per_type_count"] == {"other": 15, "yes/no": 30}
    assert vqa_accuracy(model, rows[:6], cache=False)["accuracy"] == pytest.approx(
        vqa_accuracy(model, rows[:6])["accuracy"])


def test_predict_choices_is_answer_with_choices_batched(model, gallery):
    images = [gallery / "rocket.jpg", gallery / "cat.jpg", gallery / "rocket.jpg"]
    questions = ["what is in the picture?", "what is in the picture?", "is this a rocket?"]
    choices = [["cat", "Rocket", "moon"], ["spaceship", "moon", "cat"], ["no", "yes"]]
    encoded = []
    encode = model.encode_images
    model.encode_images = lambda imgs, *a, **k: encoded.append(len(imgs)) or encode(imgs, *a, **k)
    try:
        got = model.predict_choices(images, questions, choices)
    finally:
        del model.encode_images
    assert encoded == [2]  # each distinct photo once
    for (answer, score), image, question, row in zip(got, images, questions, choices):
        alone = model.answer(image, question, choices=row)
        assert answer == alone["answer"] and score == pytest.approx(alone["score"], abs=1e-5)
    assert [a for a, _ in got] == ["Rocket", "cat", "yes"]
    with pytest.raises(polymodal.PolymodalError, match="knows none of the choices"):  # before any image is read
        model.predict_choices(["no-such.jpg"], ["what is it?"], [["spaceship", "kitten"]])
    with pytest.raises(polymodal.PolymodalError, match="one list per row"):
        model.predict_choices(images, questions, choices[:2])


def test_eval_scores_rows_with_choices_as_multiple_choice(model, gallery, tmp_path, capsys, caplog):
    # each row's answer is the model's SECOND best open answer: open-ended it is always wrong, chosen against a
    # candidate the model ranks lower it is always right; a row scored open-ended would fail this
    rows = []
    for name in NAMES[:6]:
        ranked = [a for a, _ in model.answer(gallery / f"{name}.jpg", "what is in the picture?",
                                              top_k=len(model.answers))["alternatives"]]
        rows.append({"image": f"{name}.jpg", "question": "what is in the picture?", "answer": ranked[1],
                     "choices": [ranked[-1], ranked[1]]})
    rows.append({"image": "cat.jpg", "question": "what is in the picture?", "answer": "cat"})  # an open one
    qa = gallery / "qa-choices.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = vqa_accuracy(model, read_qa(qa))
    assert out["multiple_choice_count"] == 6 and out["multiple_choice_accuracy"] == 1.0
    assert out["accuracy"] == pytest.approx(7 / 7) and out["count"] == 7
    no_choices = vqa_accuracy(model, [{**r, "image": gallery / r["image"], "choices": None} for r in rows])
    assert no_choices["accuracy"] == round(1 / 7, 4) and "multiple_choice_count" not in no_choices

    # the CLI: same figures; a model that can score none of a row's choices is one error, not unreadable rows
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", str(model.save(tmp_path / "m"))]) == 0
    assert json.loads(capsys.readouterr().out)["multiple_choice_accuracy"] == 1.0
    qa.write_text(json.dumps({"image": "cat.jpg", "question": "what is it?", "answer": "kitten",
                              "choices": ["kitten", "puppy"]}) + "\n")
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", str(tmp_path / "m")]) == 2
    assert "knows none of the choices" in capsys.readouterr().err
    # beside rows it can score, such a row counts as wrong (as an open answer outside the vocabulary does)
    with qa.open("a") as f:
        f.write(json.dumps({"image": "cat.jpg", "question": "what is it?", "answer": "cat",
                            "choices": ["cat", "moon"]}) + "\n")
    with caplog.at_level(logging.WARNING):
        mixed = vqa_accuracy(model, read_qa(qa))
    assert mixed["accuracy"] == 0.5 and mixed["multiple_choice_unscorable"] == 1
    assert "1 multiple-choice row counted as wrong" in caplog.text
    qa.write_text(json.dumps({"image": "cat.jpg", "question": "what is it?", "answer": "kitten",  # beside an open row
                              "choices": ["kitten", "puppy"]}) + "\n" + json.dumps(
        {"image": "cat.jpg", "question": "what is in the picture?", "answer": "cat"}) + "\n")
    assert vqa_accuracy(model, read_qa(qa))["accuracy"] == 0.5
    qa.write_text(json.dumps({"image": "cat.jpg", "question": "what is it?", "answer": "cat",
                              "choices": ["cat", "kitten"]}) + "\n")
    with caplog.at_level(logging.WARNING):  # said once for the file, not once per row or batch
        assert vqa_accuracy(model, read_qa(qa))["accuracy"] == 1.0
    assert caplog.text.count("these score 0: kitten") == 1


@pytest.mark.parametrize("choices, reason", [
    ("cat,dog", "must be a list"),
    (["cat"], "two or more different candidates"),
    (["cat", "Cat."], "two or more different candidates"),
    (["dog", "moon"], "not among its choices"),
    (["cat", True], "must hold text"),
    ([], '"choices" is empty'),
])
def test_rows_with_unusable_choices_are_skipped_and_say_why(gallery, choices, reason, caplog):
    qa = gallery / "qa-bad-choices.jsonl"
    good = {"image": "cat.jpg", "question": "what is it?", "answer": "cat", "choices": ["a cat", "dog"]}
    qa.write_text(json.dumps({**good, "choices": choices}) + "\n" + json.dumps(good) + "\n")
    with caplog.at_level(logging.WARNING):
        rows = read_qa(qa)
    assert [r.choices for r in rows] == [("a cat", "dog")]  # a candidate matches as answers compare: "a cat" = cat
    assert reason in caplog.text


def test_explain_heatmap_attention_and_gradient(model, gallery, tmp_path):
    heat = model.explain(gallery / "cat.jpg", "what is in the picture?")
    assert heat.shape == (7, 7) and heat.dtype == np.float32
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0
    out = save_heatmap(gallery / "cat.jpg", heat, tmp_path / "heat.png", transform=model.transform, legend=False)
    with Image.open(out) as png, Image.open(gallery / "cat.jpg") as src:
        assert png.format == "PNG" and png.size == src.size

    # a fusion without attention over the image: gradient x input relevance instead
    saved = model.fusion
    try:
        model.fusion = build_fusion("concat", [64, 64], 64)
        grad_heat = model.explain(gallery / "cat.jpg", "what is in the picture?")
    finally:
        model.fusion = saved
    assert grad_heat.shape == (7, 7) and np.isfinite(grad_heat).all() and grad_heat.max() <= 1


def test_cli_vqa_and_eval(trained, qa_file, gallery, tmp_path, capsys):
    folder = str(trained[0] / "model")
    assert cli.main(["vqa", str(gallery / "moon.jpg"), "what is in the picture?", "--model", folder,
                     "--explain", str(tmp_path / "x.png"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer"] == "moon" and len(out["alternatives"]) == 3 and (tmp_path / "x.png").is_file()
    assert out["warnings"] == [] and out["model"]  # as /v1/vqa replies
    assert cli.main(["vqa", str(gallery / "moon.jpg"), "is this a moon?", "--model", folder, "--choices", "yes,no"]) == 0
    assert capsys.readouterr().out.startswith("yes")

    assert cli.main(["eval", "vqa", "--qa", str(qa_file), "--model", folder]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert metrics["questions"] == 45 and metrics["accuracy"] > 0.8 and "yes/no" in metrics["per_type"]

    assert cli.main(["vqa", str(gallery / "moon.jpg"), "what?", "--model", "lite"]) == 2  # not a VQA model
    assert "does not answer questions" in capsys.readouterr().err


def test_cli_vqa_json_carries_the_models_warnings_as_the_http_reply_does(gallery, capsys):
    assert cli.main(["vqa", str(gallery / "cat.jpg"), "what color is the cat?", "--model", "coco-yesno",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"].startswith("coco-yesno") and out["answer"] in ("yes", "no")
    assert len(out["warnings"]) == 1 and "does not read like a yes/no question" in out["warnings"][0]


def test_builtin_easy_vqa_model_answers_real_questions():
    easy_vqa = pytest.importorskip("easy_vqa")
    if not (HERE / "models" / "easy-vqa" / "config.json").is_file():
        pytest.skip("the built-in easy-vqa model is not shipped in this checkout")
    model = polymodal.load("easy-vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    rows = [{"image": paths[i], "question": q, "answer": a}
            for q, a, i in list(zip(questions, answers, image_ids))[:200]]
    result = vqa_accuracy(model, rows)
    assert result["accuracy"] >= 0.95, result
    first = rows[0]
    assert model.answer(first["image"], first["question"])["answer"] == first["answer"]


@pytest.mark.parametrize("cast", [lambda m: m.half(), lambda m: m.to(torch.bfloat16)])
def test_a_fusion_encoder_cast_to_half_precision_says_what_works(model, gallery, tmp_path, cast):
    m = cast(polymodal.load(str(model.save(tmp_path / "m"))))
    with pytest.raises(polymodal.PolymodalError, match=r"computes in float32: call \.float\(\).*precision='bf16'"):
        m.answer(gallery / "cat.jpg", "what is in the picture?")
    with pytest.raises(polymodal.PolymodalError, match="computes in float32"):
        m.vqa_logits(*[t.float() if t.is_floating_point() else t for t in (
            torch.zeros(1, 49, 1280), torch.zeros(1, 3, 384), torch.ones(1, 3, dtype=torch.bool))])
    assert m.float().answer(gallery / "cat.jpg", "what is in the picture?")["answer"] == "cat"  # the way back


def test_rows_outside_a_continued_models_answers_train_its_itm_head(trained, qa_file, tmp_path, caplog, monkeypatch):
    """With --itm-weight, rows whose answers the continued model lacks reach the ITM loss (not the VQA head's)."""
    from polymodal.train.vqa_objective import VQAObjective

    rows = [json.loads(line) for line in qa_file.read_text().splitlines()]
    rows[0]["answer"] = "purple"
    new = qa_file.parent / "qa_purple.jsonl"
    new.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen, compute = [], VQAObjective.compute

    def spy(self, model, batch):
        seen.append((batch.targets.tolist(), len(batch.itm_labels)))
        return compute(self, model, batch)

    monkeypatch.setattr(VQAObjective, "compute", spy)
    with caplog.at_level(logging.WARNING):
        cli_json(["train", "vqa", "--qa", str(new), "--model", str(trained[0] / "model"), "--out", str(tmp_path / "a"),
                  "--quiet", "--epochs", "1", "--val-fraction", "0", "--itm-weight", "1"])
    targets = [t for batch, _ in seen for t in batch]
    assert len(targets) == len(rows) and targets.count(-1) == 1
    assert sum(n for _, n in seen) == 2 * len(rows)  # a matching and a wrong "question answer" text per row
    assert "they train through the ITM loss alone" in caplog.text


def test_continuing_on_answers_the_model_lacks_says_so(trained, qa_file, tmp_path, caplog):
    rows = [json.loads(line) for line in qa_file.read_text().splitlines()]
    rows[0]["answer"], rows[1]["answer"] = "purple", "maybe"  # outside its vocabulary
    new = qa_file.parent / "qa_new_answers.jsonl"
    new.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        cli_json(["train", "vqa", "--qa", str(new), "--model", str(trained[0] / "model"), "--out", str(tmp_path / "a"),
                  "--quiet", "--epochs", "1", "--val-fraction", "0"])
    assert f"2 of {len(rows)} training rows have answers outside {trained[0] / 'model'}'s 17 answers ('maybe', " \
           "'purple')" in caplog.text and "--new-head" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cli_json(["train", "vqa", "--qa", str(new), "--model", str(trained[0] / "model"), "--out", str(tmp_path / "b"),
                  "--quiet", "--epochs", "1", "--val-fraction", "0", "--new-head"])
    assert "outside" not in caplog.text
