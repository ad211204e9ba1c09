"""What an audit of the fusion modules' and VQA models' inputs found (lab-s22 fusion audit): choices matched to the
answers as evaluation compares them, eval vqa rows of the wrong types or with unreadable images, long questions cut
silently, additive attention masks read inverted, blank questions answered, NaN late-fusion weights."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image

from polymodal.data.answers import choice_index, unique_choices
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import as_rows, read_qa, vqa_accuracy
from polymodal.fusion import build_fusion


@pytest.fixture(scope="module")
def triangle():
    easy_vqa = pytest.importorskip("easy_vqa")
    return easy_vqa.get_test_image_paths()[0]  # a red triangle


def test_choices_and_answers_are_keyed_as_evaluation_compares_them():
    assert list(unique_choices(["A triangle", "two", "Circle."])) == ["triangle", "2", "circle"]
    assert choice_index(["Yes", "No", "yes"]) == {"yes": 0, "no": 1}  # the first spelling keeps the index


def test_a_choice_with_an_article_finds_the_answer_it_names(easy_vqa, triangle):
    got = easy_vqa.answer(triangle, "what shape is it?", choices=["circle", "a triangle"])
    assert got["answer"] == "a triangle" and got["score"] > 0.9  # scored 0 (unknown answer) before


def test_a_question_longer_than_the_model_reads_is_named(easy_vqa, triangle, caplog):
    long = ("looking closely at this small synthetic picture with a plain white background and a single coloured "
            "object drawn somewhere in the middle of it, and ignoring the background entirely, tell me: what shape?")
    with caplog.at_level(logging.WARNING):
        easy_vqa.answer(triangle, "what shape is it?")
        assert "longer than this model reads" not in caplog.text
        easy_vqa.answer(triangle, long)
    assert "word pieces longer than this model reads (max_question_tokens=32)" in caplog.text


@pytest.mark.parametrize("bad", [2, 1000, -5, True, 32.0])
def test_max_question_tokens_is_checked(bad):
    from polymodal.models.fusion_encoder import FusionEncoderConfig

    with pytest.raises(PolymodalError, match="max_question_tokens must be a whole number from 3 to 512"):
        FusionEncoderConfig(max_question_tokens=bad).validate()


def test_blank_questions_are_refused_by_predict_too(easy_vqa, triangle):
    with pytest.raises(PolymodalError, match="question 1 is empty"):
        easy_vqa.predict([triangle, triangle], ["what shape is it?", "   "])


def test_eval_vqa_skips_rows_of_the_wrong_types(tmp_path, caplog):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "is it red?", "answer": "yes"},
            {"image": "a.png", "question": "is it red?", "answer": True},  # was scored as "true"
            {"image": "a.png", "question": "what colour?", "answer": ["red"]},
            {"image": "a.png", "question": ["what", "colour"], "answer": "red"},
            {"image": "a.png", "question": "what colour?", "answer": "red", "answer_type": 1},  # a traceback later
            {"image": "a.png", "question": "how many?", "answer": 2}]  # a number is a fine answer
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        got = read_qa(tmp_path / "qa.jsonl")
    assert [(r.question, r.answer) for r in got] == [("is it red?", "yes"), ("how many?", "2")]
    assert "skipped 4 unusable rows" in caplog.text and 'write "yes" or "no"' in caplog.text
    with pytest.raises(PolymodalError, match="answer_type must be text"):
        as_rows([rows[4]])


def test_eval_vqa_leaves_out_a_row_whose_image_cannot_be_read(easy_vqa, triangle, tmp_path, caplog):
    (tmp_path / "text.png").write_text("not a photo")
    rows = [{"image": str(triangle), "question": "what shape is it?", "answer": "triangle"},
            {"image": str(tmp_path / "text.png"), "question": "what shape is it?", "answer": "circle"}]
    for cache in (True, False):
        with caplog.at_level(logging.WARNING):
            got = vqa_accuracy(easy_vqa, rows, cache=cache)
        assert (got["accuracy"], got["count"], got["unreadable"]) == (1.0, 1, 1)
        assert "left out 1 unreadable row" in caplog.text and "text.png" in caplog.text
        caplog.clear()


def test_an_additive_attention_mask_is_refused_and_lists_are_masks_too():
    f = build_fusion("cross_attention", [8, 6], 8).eval()
    x0, x1 = torch.randn(3, 5, 8), torch.randn(3, 4, 6)
    real = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    additive = torch.zeros(3, 4).masked_fill(~real, float("-inf"))  # nn.MultiheadAttention / HF style
    with pytest.raises(PolymodalError, match=r"mask 1 holds values other than 0 and 1 .*e.g. mask == 0"):
        f([x0, x1], [None, additive])
    want = f([x0, x1], [None, real]).pooled
    for same in (real.tolist(), real.numpy(), real.float()):
        assert torch.allclose(f([x0, x1], [None, same]).pooled, want)
    with pytest.raises(PolymodalError, match="mask 1 must be a \\[B, T\\] tensor"):
        f([x0, x1], [None, "ab"])


@pytest.mark.parametrize("weights", [[float("nan"), 1.0], [float("inf"), 1.0], "ab"])
def test_late_fusion_refuses_weights_that_are_not_finite_numbers(weights):
    with pytest.raises(PolymodalError, match="late fusion: weights must be 2 finite non-negative numbers"):
        build_fusion("late", [8, 8], 8, weights=weights)


@pytest.mark.parametrize("setting, message", [
    ({"fusion_options": None}, "fusion_options must be a dict"),
    ({"dim": True}, "dim must be a positive int"),
    ({"dropout": 2.0}, r"dropout must be a number in \[0, 1\)"),
    ({"image_size": 224.0}, "image_size must be a whole number of pixels"),
    ({"answers": ["yes", 1]}, "answers must be non-blank strings, got 1"),
    ({"answers": ["", "x"]}, "answers must be non-blank strings, got ''"),
])
def test_fusion_encoder_settings_of_the_wrong_type_are_one_error(setting, message):
    from polymodal.models.fusion_encoder import FusionEncoderConfig

    with pytest.raises(PolymodalError, match=message):  # each was a raw TypeError / ValueError from torch
        FusionEncoderConfig(**setting).validate()


@pytest.mark.parametrize("fusion, options, message", [
    ("cross_attention", {"query": 1.0}, "query must be 0 or 1"),  # list indices must be integers, deep in torch
    ("cross_attention", {"query": True}, "query must be 0 or 1"),
    ("single_stream", {"max_len": 0}, "max_len must be a whole number of at least 1"),
    ("concat", {"hidden": 0}, "hidden must be a whole number of at least 1"),  # silently became out_dim
    ("tensor", {"hidden": 2.5}, "hidden must be a whole number of at least 1"),
    ("gated", {"dropout": 1.5}, r"dropout must be a number in \[0, 1\)"),
])
def test_fusion_options_of_the_wrong_kind_are_one_error(fusion, options, message):
    with pytest.raises(PolymodalError, match=f"{fusion} fusion: {message}"):
        build_fusion(fusion, [8, 8], 8, **options)


def test_fusion_options_that_are_fine_still_build():
    assert build_fusion("tensor", [8, 8], 8, hidden=[4, 8]) is not None  # one size per modality
    assert build_fusion("concat", [8, 8], 8, hidden=None) is not None
    assert build_fusion("cross_attention", [8, 8], 8, query=1).query_index == 1
