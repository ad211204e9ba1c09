"""Stop 49's review of its own change (helper s49/diffreview): rows read to score or train compare as before the
"question_id" of `vqa --qa` was kept (a repeated photo, question and answer is skipped whatever its id; an id that is
a list broke reading), and a results file's warning counts its questions in words."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from polymodal import cli
from polymodal.eval.vqa import read_qa


@pytest.fixture
def qa_folder(tmp_path):
    for name, colour in (("red.png", "red"), ("blue.png", "blue")):
        Image.new("RGB", (32, 32), colour).save(tmp_path / name)
    return tmp_path


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_to_score_are_compared_without_their_question_id(qa_folder, caplog):
    path = _write(qa_folder / "qa.jsonl", [
        {"image": "red.png", "question": "what color is it?", "answer": "red", "question_id": 1},
        {"image": "red.png", "question": "what color is it?", "answer": "red", "question_id": 2},  # a repeat
        {"image": "blue.png", "question": "what color is it?", "answer": "blue", "question_id": [3]}])
    with caplog.at_level(logging.WARNING):
        rows = read_qa(path)  # eval vqa and train vqa: as before question ids were read (was: 3 rows; a TypeError)
    assert [(r.image.name, r.question_id) for r in rows] == [("red.png", None), ("blue.png", None)]
    assert "repeats" in caplog.text
    asked = read_qa(path, need_answers=False)  # vqa --qa: each id is a question the server wants answered
    assert [(r.image.name, r.question_id) for r in asked] == [("red.png", 1), ("red.png", 2)]
    assert 'the "question_id" must be a number or text, got [3]' in caplog.text


def test_a_results_file_warns_of_one_unreadable_photo_in_the_singular(qa_folder, caplog):
    (qa_folder / "broken.png").write_text("not a photo")
    path = _write(qa_folder / "qa.jsonl", [
        {"image": "red.png", "question": "what color is it?", "question_id": 1},
        {"image": "broken.png", "question": "what color is it?", "question_id": 2}])
    with caplog.at_level(logging.WARNING):
        assert cli.main(["vqa", "--qa", str(path), "--out", str(qa_folder / "results.json")]) == 0
    assert "1 question whose photo could not be read has" in caplog.text
    assert [r["answer"] == "" for r in json.loads((qa_folder / "results.json").read_text())] == [False, True]
