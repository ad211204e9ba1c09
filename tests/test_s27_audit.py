"""What a mutation audit of git diff 43554ed..f236955 showed slipping through: vqa_fields on answers that are not
quite the VQA models' shape (and numpy values), the web page's showAnswer (run under node), cached_predictions with
choices (the ITM question of each row, train mode, unreadable photos), vqa_accuracy's choice of the cached path and a
model without predict_choices, and benchmarks/image_centering.py (which rows are centred, by which mean and beta).
Each test was checked to fail on its mutation."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.eval.vqa import vqa_accuracy

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


# -- /v1/vqa's reply: vqa_fields ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", [
    {"answer": 5, "score": 1.0, "alternatives": [(5, 1.0)]},               # not a text answer
    {"answer": "red", "score": 1.0, "alternatives": [("red", 1.0, "x")]},  # not (answer, score) pairs
    {"answer": "red", "score": 1.0, "alternatives": ["ab"]},               # a 2-letter string is no pair
    {"answer": "red", "score": 1.0, "alternatives": [("red", 1.0), "x"]},  # one pair among others is not enough
])
def test_vqa_fields_sends_an_answer_not_of_the_vqa_shape_whole(answer):
    from polymodal.serve.service import jsonable, vqa_fields

    assert vqa_fields(answer) == {"answer": jsonable(answer)}


def test_vqa_fields_makes_numpy_alternatives_plain_json():
    from polymodal.serve.service import vqa_fields

    got = vqa_fields({"answer": "2", "score": np.float32(0.5),
                      "alternatives": [(np.int64(2), np.float32(0.5)), ("3", np.float64(0.25))]})
    assert json.loads(json.dumps(got)) == {"answer": "2", "score": 0.5, "alternatives": [
        {"answer": 2, "score": 0.5}, {"answer": "3", "score": 0.25}]}


# -- the web page's showAnswer, run under node over a stub document ----------------------------------------------------

def show_answers(replies: list) -> list:
    from polymodal.serve.page import render_page

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed")
    page = render_page()
    start, end = page.index("function pct("), page.index('$("vqa-form")')
    script = """
const els = {"vqa-answer": {textContent: "", kids: null, replaceChildren(...k) { this.kids = k; }}};
const $ = (id) => els[id];
const document = {createElement: () => ({textContent: "", className: ""})};
""" + page[start:end] + """
console.log(JSON.stringify(REPLIES.map((r) => { showAnswer(r); return els["vqa-answer"].kids.map((k) => k.textContent); })));
""".replace("REPLIES", json.dumps(replies))
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_page_shows_the_vqa_reply_as_the_server_sends_it():
    from polymodal.serve.page import render_page

    vqa = {"answer": "red", "score": 0.75, "warnings": ["answers only yes or no"],
           "alternatives": [{"answer": "red", "score": 0.75}, {"answer": "blue", "score": 0.2}]}
    own = {"answer": {"answer": "red", "votes": [3, 1]}, "warnings": []}
    assert show_answers([vqa, own]) == [["red (75%)", "also: blue (20%)", "note: answers only yes or no"],
                                        ['{"answer":"red","votes":[3,1]}', "", ""]]
    assert "showAnswer(res);" in render_page()  # the whole reply, warnings and all


# -- cached_predictions with choices, over a tiny fusion encoder -------------------------------------------------------

@pytest.fixture(scope="module")
def enc():
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    torch.manual_seed(0)
    return FusionEncoder(FusionEncoderConfig(fusion="cross_attention", dim=16, dropout=0.3, itm_head=True,
                                             answers=["yes", "no", "red"])).eval()


def test_each_row_scores_outside_choices_with_its_own_question(enc, gallery):
    from polymodal.train.vqa import cached_predictions

    cat, coffee = str(gallery / "cat.jpg"), str(gallery / "coffee.jpg")
    choices = ["blue", "green"]
    # rows are taken a chunk of photos at a time, so row 1 (coffee) comes third: its own question, not the third's
    got = cached_predictions(enc, [cat, coffee, cat], ["is it red?", "what colour is it?", "which one is it?"],
                             choices=[None, choices, None])
    alone = cached_predictions(enc, [coffee], ["what colour is it?"], choices=[choices])[0]
    other = cached_predictions(enc, [coffee], ["which one is it?"], choices=[choices])[0]
    assert got[1][0] == alone[0] and got[1][1] == pytest.approx(alone[1], rel=1e-6)
    assert abs(other[1] - alone[1]) > 1e-4  # the question matters to the ITM head: the case tells them apart


def test_cached_predictions_in_train_mode_answer_as_in_eval_mode(enc, gallery):
    from polymodal.train.vqa import cached_predictions

    images = [str(gallery / f"{name}.jpg") for name in ("cat", "coffee", "rocket")]
    questions = ["is it red?", "what colour is it?", "is it a cat?"]
    choices = [None, ["blue", "red"], ["yes", "no"]]
    ref = cached_predictions(enc, images, questions, choices=choices)
    try:
        enc.train()  # dropout 0.3: answers would change from call to call
        got = cached_predictions(enc, images, questions, choices=choices)
    finally:
        enc.eval()
    for (a, s), (ra, rs) in zip(got, ref):
        assert a == ra and s == pytest.approx(rs, rel=1e-6)


def test_cached_predictions_without_choices_answers_every_row_open(enc, gallery):
    from polymodal.train.vqa import cached_predictions

    images, questions = [str(gallery / "cat.jpg"), str(gallery / "coffee.jpg")], ["is it red?", "what is it?"]
    assert cached_predictions(enc, images, questions) == cached_predictions(enc, images, questions, choices=[None, ()])


def test_eval_leaves_out_an_unreadable_multiple_choice_row_from_the_cache(enc, gallery, tmp_path, caplog):
    (tmp_path / "text.png").write_text("not a photo")
    rows = [{"image": str(tmp_path / "text.png"), "question": "is it red?", "answer": "red", "choices": ["red", "no"]},
            {"image": str(gallery / "cat.jpg"), "question": "is it red?", "answer": "red", "choices": ["red", "blue"]},
            {"image": str(gallery / "cat.jpg"), "question": "is it a cat?", "answer": "yes"}]
    with caplog.at_level(logging.WARNING):
        out = vqa_accuracy(enc, rows)
    assert (out["count"], out["unreadable"], out["multiple_choice_count"]) == (2, 1, 1)
    assert "left out 1 unreadable row" in caplog.text and "text.png" in caplog.text


def test_eval_takes_the_cache_only_when_every_asked_row_is_a_path(enc, gallery):
    photo = np.full((64, 64, 3), (200, 30, 30), np.uint8)  # an array: no path to key the cache on
    rows = [{"image": photo, "question": "what colour is it?", "answer": "red", "choices": ["red", "blue"]},
            {"image": str(gallery / "cat.jpg"), "question": "is it a cat?", "answer": "yes"}]
    out = vqa_accuracy(enc, rows)
    assert out["count"] == 2 and out["multiple_choice_count"] == 1
    assert out["multiple_choice_accuracy"] == float(enc.predict_choices([photo], ["what colour is it?"],
                                                                        [["red", "blue"]])[0][0] == "red")


def test_a_model_without_predict_choices_evaluates_open_rows():
    class OpenOnly:
        name = "open-only"

        def answer(self, image, question, choices=None, top_k=3):
            raise AssertionError("eval must not call answer() row by row")

        def predict(self, images, questions):
            return [("cat", 0.9) for _ in images]

    out = vqa_accuracy(OpenOnly(), [{"image": "a", "question": "what is it?", "answer": "cat"}])
    assert out["accuracy"] == 1.0 and "multiple_choice_count" not in out


# -- benchmarks/image_centering.py -------------------------------------------------------------------------------------

def centering_module():
    spec = importlib.util.spec_from_file_location("_benchmark_image_centering_s27", BENCHMARKS / "image_centering.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_centered_normalises_each_row_after_moving_it():
    module = centering_module()
    rows, mean = np.array([[0.6, 0.8], [0.0, 1.0]]), np.array([0.2, 0.0])
    moved = np.array([[0.5, 0.8], [-0.1, 1.0]])
    assert np.allclose(module.centered(rows, mean, 0.5), moved / np.linalg.norm(moved, axis=1, keepdims=True))
    assert np.allclose(module.centered(rows, rows[0], 1.0)[0], 0.0)  # a zero row stays zero, not NaN


def test_centering_subtracts_the_reference_photos_mean_times_each_beta(gallery, tmp_path, monkeypatch, capsys):
    module = centering_module()
    names = ["cat", "coffee", "rocket", "astronaut", "cameraman"]
    vectors = {n: np.random.default_rng(i).normal(size=4).astype(np.float32) for i, n in enumerate(names)}

    class Fake:
        def encode_image(self, images, batch_size=32):
            emb = np.stack([vectors[Path(i).stem] for i in images])
            return emb / np.linalg.norm(emb, axis=1, keepdims=True)

        def encode_text(self, texts):
            return np.stack([vectors[t] for t in texts])

    files = []
    for part, chosen in (("test", names[:3]), ("ref", names[3:])):
        files.append(tmp_path / f"{part}.jsonl")
        files[-1].write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": n}) + "\n" for n in chosen))
    seen = []
    monkeypatch.setattr(module.polymodal, "load", lambda name: Fake())
    monkeypatch.setattr(module, "retrieval_metrics", lambda i, t, c: seen.append((i, t, list(c))) or {"i2t_R@1": 0.0})
    assert module.main(["--pairs", str(files[0]), "--ref-pairs", str(files[1]), "--models", "fake",
                        "--betas", "0", "0.5"]) == 0
    images = Fake().encode_image(names[:3])
    mean = Fake().encode_image(names[3:]).mean(0)
    assert len(seen) == 2
    for (got, texts, caption_image), beta in zip(seen, (0.0, 0.5)):
        assert np.allclose(got, module.centered(images, mean, beta), atol=1e-6)
        assert np.array_equal(texts, Fake().encode_text(names[:3])) and caption_image == [0, 1, 2]
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["beta"], r["images"], r["ref_images"]) for r in lines] == [("fake", 0.0, 3, 2), ("fake", 0.5, 3, 2)]
