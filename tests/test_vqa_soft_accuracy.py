"""VQA v2 scoring: annotators' answers give the soft accuracy, and answers compare as the official evaluation does."""

import json

import pytest
from PIL import Image

from polymodal.data.answers import comparable_answer, soft_vqa_score
from polymodal.eval.vqa import accuracy_by_type, read_qa
from polymodal.errors import PolymodalError


@pytest.mark.parametrize("given, expected", [("Two dogs!", "2 dogs"), ("the red one", "red 1"), ("3.5", "3.5"),
                                             ("Yes.", "yes"), ("it's ok", "it's ok"), ("end.", "end"),
                                             ("a", ""), ("ten", "10")])
def test_comparable_answer(given, expected):
    assert comparable_answer(given) == expected


@pytest.mark.parametrize("agree, expected", [(10, 1.0), (4, 1.0), (3, 0.9), (2, 0.6), (1, 0.3), (0, 0.0)])
def test_soft_score_follows_the_vqa_v2_formula(agree, expected):
    # mean over leaving each of the 10 annotators out of min(1, agreeing others / 3)
    assert soft_vqa_score("2", ["2"] * agree + ["3"] * (10 - agree)) == pytest.approx(expected)


def test_a_single_annotator_is_exact_match():
    assert soft_vqa_score("red", ["red"]) == 1.0 and soft_vqa_score("red", ["blue"]) == 0.0


def test_qa_file_with_vqa_v2_annotations(tmp_path, caplog):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "how many?", "answers": [{"answer": "2"}] * 3 + [{"answer": "3"}] * 7},
            {"image": "a.png", "question": "what colour?", "answer": "red", "answers": ["Red"] * 2 + ["blue"] * 8},
            {"image": "a.png", "question": "is it?", "answer": "yes"},
            {"image": "a.png", "question": "bad", "answers": "yes"}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_qa(tmp_path / "qa.jsonl")
    assert [r.answer for r in got] == ["3", "red", "yes"]  # the most common annotator answer when none is given
    assert got[1].answers == ("Red",) * 2 + ("blue",) * 8 and got[2].answers == ()  # as written (stop 51)
    assert "must be a list of the annotators' answers" in caplog.text  # the 4th row is skipped and said why
    m = accuracy_by_type(["two", "red", "Yes."], got)
    # "red" matches no 'Red': the official script compares annotators' answers as written, less punctuation (stop 51)
    assert m["accuracy"] == pytest.approx((0.9 + 0.0 + 1.0) / 3) and m["soft_count"] == 2 and m["count"] == 3


def test_dict_rows_take_annotators_too():
    rows = [{"image": "x.png", "question": "q", "answer": "2", "answers": ["2", "2", "2"]}]
    assert accuracy_by_type(["2"], rows)["accuracy"] == pytest.approx(2 / 3)  # each left-out view sees 2 of 3
    with pytest.raises(PolymodalError, match="blank answer"):
        accuracy_by_type(["2"], [{**rows[0], "answers": ["2", {"no": 1}]}])


def test_none_is_zero_as_in_vqa_v2():
    from polymodal.data.answers import comparable_answer
    from polymodal.eval.vqa import accuracy_by_type, as_rows

    assert comparable_answer("None.") == "0"
    rows = as_rows([{"image": "x.jpg", "question": "How many dogs?", "answers": ["0"] * 10, "answer": "0"}])
    assert accuracy_by_type(["none"], rows)["accuracy"] == 1.0
