"""What a review of VQA found (stop 37): answers spelt apart that evaluation scores as one ('Yes!' and 'yes'), a
heat map of another answer than the one printed, a lone choice always at 1.000, negated yes/no questions, and two
refusals that came too late or named a command that fails."""

import json

import easy_vqa
import numpy as np
import pytest

from polymodal.errors import PolymodalError
from polymodal.eval.vqa import QARow, answer_type
from polymodal.models.yesno import question_to_statement
from polymodal.train.vqa import answer_vocabulary

RED_TRIANGLE = easy_vqa.get_test_image_paths()[0]  # test image 0: "what is the color of the triangle?" -> red


def test_answers_evaluation_scores_as_one_are_one_class_named_by_their_commonest_spelling():
    rows = [QARow("a.png", "q", a) for a in ["yes", "yes!", "yes", "no", "no!", "no!", "two", "2", "2", "a dog"]]
    assert answer_vocabulary(rows) == ["2", "no!", "yes", "a dog"]  # 'no!' wrote twice, 'no' once


def test_yes_or_no_with_punctuation_is_a_yes_no_answer():
    assert answer_type("Yes!") == answer_type("no.") == "yes/no" and answer_type("yesterday") == "other"


def test_training_rows_answered_yes_with_punctuation_train_the_yes_class():
    from polymodal.data.answers import choice_index
    from polymodal.train.vqa import answer_targets

    rows = [QARow("a.png", "q", a) for a in ["yes", "yes!", "no", "no!", "no", "yes", "two", "2"]]  # as read_qa reads
    vocabulary = answer_vocabulary(rows)
    assert answer_targets(choice_index(vocabulary), rows).tolist() == [vocabulary.index(a) for a in
                                                                      ["yes", "yes", "no", "no", "no", "yes", "2", "2"]]
    assert answer_targets(choice_index(["yes", "no"]), [QARow("a.png", "q", "maybe")]).tolist() == [-1]


def test_a_lone_choice_gets_its_probability_among_all_answers(easy_vqa):
    question = "what is the color of the triangle?"
    open_answer = easy_vqa.answer(RED_TRIANGLE, question, top_k=20)
    probs = dict(open_answer["alternatives"])
    assert open_answer["answer"] == "red"
    alone = easy_vqa.answer(RED_TRIANGLE, question, choices=["blue"])
    assert alone["answer"] == "blue" and alone["score"] == pytest.approx(probs.get("blue", 0.0), abs=1e-4)
    assert alone["score"] < 0.5
    pair = easy_vqa.answer(RED_TRIANGLE, question, choices=["blue", "red"])
    assert pair["answer"] == "red" and pair["alternatives"][0][1] + pair["alternatives"][1][1] == pytest.approx(1)


def test_the_heat_map_follows_the_answer_asked_about(easy_vqa):
    question = "what is the color of the triangle?"
    top = easy_vqa.explain(RED_TRIANGLE, question)
    assert np.array_equal(top, easy_vqa.explain(RED_TRIANGLE, question, answer="red"))
    assert not np.allclose(top, easy_vqa.explain(RED_TRIANGLE, question, answer="green"))
    with pytest.raises(PolymodalError, match="not among .* answers and it has no ITM head"):
        easy_vqa.explain(RED_TRIANGLE, question, answer="purple")


def test_vqa_explain_with_choices_maps_the_printed_answer(easy_vqa, tmp_path, capsys, monkeypatch):
    import polymodal.cli_vqa as cli_vqa
    from polymodal import cli

    asked = []
    real = easy_vqa.explain
    monkeypatch.setattr(cli_vqa, "_load_vqa_model", lambda *a: easy_vqa)
    monkeypatch.setattr(easy_vqa, "explain", lambda *a, **kw: asked.append(kw.get("answer")) or real(*a, **kw))
    assert cli.main(["vqa", str(RED_TRIANGLE), "what is the color of the triangle?", "--choices", "blue,green",
                     "--explain", str(tmp_path / "h.png"), "--json"]) == 0
    assert asked == [json.loads(capsys.readouterr().out)["answer"]]


def test_a_heat_map_name_of_no_image_format_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import polymodal.cli_vqa as cli_vqa
    from polymodal import cli

    monkeypatch.setattr(cli_vqa, "_load_vqa_model", lambda *a: pytest.fail("the model loaded"))
    assert cli.main(["vqa", str(RED_TRIANGLE), "what color?", "--explain", str(tmp_path / "out.gif")]) == 2
    assert "end the file name in .png" in capsys.readouterr().err


@pytest.mark.parametrize("negated,plain", [
    ("Isn't there a dog?", "Is there a dog?"),
    ("Aren't the people walking?", "Are the people walking?"),
    ("Doesn't the man wear a hat?", "Does the man wear a hat?"),
    ("Can't this be a zoo?", "Can this be a zoo?"),
])
def test_negated_yes_no_questions_read_as_their_positive_form(coco_yesno, negated, plain, caplog):
    assert question_to_statement(negated) == question_to_statement(plain)
    import logging

    with caplog.at_level(logging.WARNING):
        coco_yesno.answer(RED_TRIANGLE, negated)
    assert "does not read like a yes/no question" not in caplog.text


def test_the_missing_export_hint_for_a_vqa_model_names_val_qa(monkeypatch, tmp_path):
    import polymodal

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    with pytest.raises(PolymodalError, match=r"`polymodal export onnx easy-vqa --val-qa FILE\.jsonl`"):
        polymodal.load("easy-vqa", runtime="onnx")


def test_a_resumed_run_whose_vocabulary_changed_is_refused_not_read_under_other_answers(tmp_path):
    from polymodal.train.run_settings import check_same_answers

    check_same_answers(tmp_path, ["2", "no", "dog"])  # no model saved yet: nothing to compare
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"answers": ["2", "no", "two"]}))
    check_same_answers(tmp_path, ["2", "no", "two"])
    with pytest.raises(PolymodalError, match=r"over 3 answers and this data gives 3 \(2 differ, e.g. 'dog', 'two'\)"):
        check_same_answers(tmp_path, ["2", "no", "dog"])  # a vocabulary capped by --max-answers: the same size
    with pytest.raises(PolymodalError, match="the same ones in another order"):
        check_same_answers(tmp_path, ["no", "2", "two"])


def test_itm_negatives_are_never_a_spelling_of_the_rows_own_answer():
    from polymodal.train.vqa import _itm_texts

    rows = [QARow("a.png", f"how many {i}?", a) for i, a in enumerate(["2", "two"] * 20)]
    for seed in range(10):
        texts, pos, neg = _itm_texts(rows, ["2", "two", "3"], seed)
        assert all(texts[n].endswith(" 3") for n in neg)  # '2' and 'two' are one answer: only '3' is wrong
