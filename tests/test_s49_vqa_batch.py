"""`polymodal vqa --qa FILE [--out FILE]` (stop 49): every question of a file answered in one run, rows without
answers included; VQA v2's test-dev questions (no annotations published, photos in test2015/) give the evaluation
server's results file."""

import json

import pytest
from PIL import Image

import polymodal
from polymodal import cli

@pytest.fixture
def questions(gallery, tmp_path):
    rows = [{"image": str(gallery / "cat.jpg"), "question": "what color is the shape?", "question_id": 1},
            {"image": str(gallery / "rocket.jpg"), "question": "is there a circle?", "question_id": 2,
             "answer": "no"},  # an answer, if given, is not needed and not used
            {"image": str(gallery / "coffee.jpg"), "question": "what shape is it?", "question_id": 3,
             "choices": ["circle", "rectangle"]}]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_every_question_is_answered_as_one_question_alone_would_be(questions, capsys):
    path, rows = questions
    assert cli.main(["vqa", "--qa", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model = polymodal.load("easy-vqa")
    alone = [model.answer(r["image"], r["question"], choices=r.get("choices"))["answer"] for r in rows]
    assert [(i["question_id"], i["answer"]) for i in lines] == list(zip([1, 2, 3], alone))
    assert lines[2]["answer"] in ("circle", "rectangle") and all(0 < i["score"] <= 1 for i in lines)


def test_a_results_file_for_the_evaluation_server(questions, tmp_path, capsys):
    path, _ = questions
    out = tmp_path / "results.json"
    assert cli.main(["vqa", "--qa", str(path), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [sorted(r) for r in results] == [["answer", "question_id"]] * 3
    assert [r["question_id"] for r in results] == [1, 2, 3]
    assert json.loads(capsys.readouterr().out)["questions"] == 3
    jsonl = tmp_path / "answers.jsonl"
    assert cli.main(["vqa", "--qa", str(path), "--out", str(jsonl), "--choices", "yes,no"]) == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    # --choices: for the rows without their own
    assert all(i["answer"] in ("yes", "no") for i in lines[:2]) and lines[2]["answer"] in ("circle", "rectangle")


def test_a_test_dev_questions_file_as_downloaded(tmp_path, capsys):
    """No annotations file (test-dev's answers are not published), photos in COCO's test2015/."""
    (tmp_path / "Questions").mkdir()
    (tmp_path / "test2015").mkdir()
    for image_id in (5, 9):
        Image.new("RGB", (32, 32), "blue").save(tmp_path / "test2015" / f"COCO_test2015_{image_id:012d}.jpg")
    path = tmp_path / "Questions" / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    path.write_text(json.dumps({"data_subtype": "test-dev2015", "questions": [
        {"image_id": 5, "question": "What color is it?", "question_id": 5000},
        {"image_id": 9, "question": "Is it round?", "question_id": 9001}]}))
    assert cli.main(["eval", "vqa", "--qa", str(path)]) == 2  # nothing to score against: the error names the way
    assert f"polymodal vqa --qa {path.name} --out results.json" in capsys.readouterr().err
    out = tmp_path / "results.json"
    assert cli.main(["vqa", "--qa", str(path), "--out", str(out)]) == 0
    assert [r["question_id"] for r in json.loads(out.read_text())] == [5000, 9001]


@pytest.mark.parametrize("extra, says", [
    (["--out", "answers.txt"], "name it .jsonl"),
    (["--out", "results.json"], "have no \"question_id\""),
    (["--explain", "map.png"], "drop it with --qa"),
])
def test_mistakes_are_one_error_before_the_model_loads(gallery, tmp_path, monkeypatch, capsys, extra, says):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"image": str(gallery / "cat.jpg"), "question": "what is it?"}) + "\n")
    monkeypatch.setattr(polymodal, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert cli.main(["vqa", "--qa", str(path), *extra]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "results.json").exists()


def test_out_without_a_questions_file_and_neither_are_errors(capsys):
    assert cli.main(["vqa", "--out", "x.jsonl", "img.png", "what?"]) == 2
    assert "pass it with --qa FILE" in capsys.readouterr().err
    assert cli.main(["vqa"]) == 2
    assert "or a questions file with --qa FILE" in capsys.readouterr().err
