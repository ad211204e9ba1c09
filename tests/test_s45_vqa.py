"""What a review of VQA end to end found (stop 45): `eval vqa` (and training's validation) scored questions whose
answers the model can never give (coco-yesno on open questions, answers left out of a trained vocabulary) as wrong
without a word, and a multiple-choice row the model could score none of the choices of was counted as a scored,
wrong row even when its photo could not be read (so --strict passed and "unreadable" said 0); a question or choice
holding bytes that were not UTF-8 (a shell in another encoding) was a tokenizers TypeError traceback."""

import json
import logging

import pytest

from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa, vqa_accuracy
from polymodal.train.vqa import VQARecipe, train_vqa
from test_vqa import NAMES, write_qa  # noqa: E402 (tests/ is on the path)


def _rows(path, rows, gallery):
    """A QA file in a test's own folder (the session's gallery is shared: a broken photo there would reach the other
    tests that read it), naming the gallery's photos by absolute path."""
    rows = [{**r, "image": str(gallery / r["image"]) if (gallery / r["image"]).exists() else r["image"]} for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_warns_of_open_answers_the_model_can_never_give(gallery, coco_yesno, caplog, tmp_path):
    qa = _rows(tmp_path / "open.jsonl", [
        {"image": f"{NAMES[0]}.jpg", "question": "what is in the picture?", "answer": NAMES[0]},
        {"image": f"{NAMES[1]}.jpg", "question": "what colour is it?", "answer": "red"},
        {"image": f"{NAMES[2]}.jpg", "question": "is this a photo?", "answer": "yes"},
        {"image": f"{NAMES[3]}.jpg", "question": "is it?", "answer": "purple", "answers": ["purple", "no", "no"]}], gallery)
    with caplog.at_level(logging.WARNING):
        out = vqa_accuracy(coco_yesno, read_qa(qa))
    said = [r.getMessage() for r in caplog.records if "outside" in r.getMessage()]
    # the annotators' 'no' can score: only the first two rows are out of reach
    assert len(said) == 1 and said[0].startswith("2 of 4 open questions have answers outside coco-yesno's 2 answers")
    assert f"'{NAMES[0]}'" in said[0] and "'red'" in said[0] and "count as wrong" in said[0]
    assert out["count"] == 4


def test_training_warns_of_validation_answers_outside_the_vocabulary(gallery, tmp_path, caplog):
    # (QA files beside the photos, as test_vqa's: .jsonl files there are skipped by every folder scan)
    train = write_qa(gallery / "s45-train.jsonl", NAMES)  # each photo's name once: under --min-answer-count 2
    val = write_qa(gallery / "s45-val.jsonl", NAMES[:4])
    recipe = VQARecipe(qa=str(train), val_qa=str(val), out=str(tmp_path / "run"), min_answer_count=2,
                       arch={"fusion": "concat", "dim": 16, "dropout": 0.0},
                       train={"epochs": 1, "warmup_steps": 1, "patience": 0}, batch_size=16)
    with caplog.at_level(logging.WARNING):
        train_vqa(recipe, progress=False)
    said = [r.getMessage() for r in caplog.records if "validation questions have answers outside" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("4 of 12 validation questions") and "val/accuracy" in said[0]


def test_an_unscorable_choice_row_of_an_unreadable_photo_is_unreadable_not_wrong(gallery, coco_yesno, capsys,
                                                                             tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    qa = _rows(tmp_path / "mc.jsonl", [
        {"image": f"{NAMES[0]}.jpg", "question": "is this a photo?", "answer": "yes"},
        {"image": "broken.jpg", "question": "what is it?", "answer": "cat", "choices": ["cat", "dog"]}], gallery)
    out = vqa_accuracy(coco_yesno, read_qa(qa))
    assert out["unreadable"] == 1 and out["count"] == 1
    assert out.get("multiple_choice_count", 0) == 0 and out.get("multiple_choice_unscorable", 0) == 0
    capsys.readouterr()
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", "coco-yesno", "--strict"]) == 2
    assert "unreadable image" in capsys.readouterr().err


def test_a_question_of_bytes_that_were_not_utf8_is_one_error(gallery, capsys):
    # typed in a Latin-1 shell, it reaches Python with a lone surrogate: tokenizers' TypeError was a traceback
    assert cli.main(["vqa", str(gallery / f"{NAMES[0]}.jpg"), "what is \udcff this?"]) == 2
    assert "the question is not valid Unicode (U+DCFF at character 9" in capsys.readouterr().err


def test_a_choice_of_bytes_that_were_not_utf8_is_one_error(easy_vqa):
    # "QUESTION CHOICE" is what an ITM head scores a choice outside the vocabulary by (FusionEncoder._itm_text)
    with pytest.raises(PolymodalError, match=r"a choice is not valid Unicode \(U\+DCFF at character 2"):
        easy_vqa.text_tower._fast.question_with_answer("is this a photo?", "m\udcffaybe")
