"""Under --split, rows with no "split" field are left out like rows of other splits; since they are more likely
rows the user meant to keep, that is a warning with their count, and the no-rows error counts them too."""

import json
import logging

import pytest

from polymodal.data.jsonl import counting_skipped
from polymodal.eval.vqa import read_qa


def _qa(gallery, tmp_path, splits):
    rows = [{"image": str(gallery / "cat.jpg"), "question": f"q{i}?", "answer": "yes", **({"split": s} if s else {})}
            for i, s in enumerate(splits)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_with_no_split_field_are_counted_in_a_warning(gallery, tmp_path, caplog):
    qa = _qa(gallery, tmp_path, ["test", None, "train", None, None, "test"])
    with caplog.at_level(logging.WARNING), counting_skipped("test"):
        rows = read_qa(qa)
    assert [r.question for r in rows] == ["q0?", "q5?"]
    assert 'left out 3 rows with no "split" field (--split keeps only rows marked \'test\')' in caplog.text


def test_all_marked_rows_give_no_warning(gallery, tmp_path, caplog):
    qa = _qa(gallery, tmp_path, ["test", "train"])
    with caplog.at_level(logging.WARNING), counting_skipped("test"):
        assert len(read_qa(qa)) == 1
    assert "no \"split\" field" not in caplog.text


def test_the_no_rows_error_counts_rows_with_no_field(gallery, tmp_path):
    qa = _qa(gallery, tmp_path, ["train", None])
    with pytest.raises(Exception, match='its rows carry train 1, and 1 row with no "split" field; pass one'):
        with counting_skipped("test"):
            read_qa(qa)
