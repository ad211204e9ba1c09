"""`eval ... --split NAME` reads only the JSON rows whose "split" field is NAME (in any case); the rows left out are
neither read nor skipped; the JSON line names the split; a split no row carries, or data with nothing to filter,
is one error."""

import json

import pytest

from polymodal import cli
from polymodal.data.jsonl import counting_skipped
from polymodal.eval.vqa import read_qa

NAMES = ["cat", "coffee", "rocket", "moon", "clock", "coins"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def qa(gallery, tmp_path):
    rows = [{"image": str(gallery / f"{n}.jpg"), "question": f"is this a {n}?", "answer": "yes",
             "split": "train" if i < 4 else "dev"} for i, n in enumerate(NAMES)]
    return _write(tmp_path / "qa.jsonl", rows)


def test_reading_keeps_only_the_split_and_counts_nothing_as_skipped(qa):
    with counting_skipped("DEV") as skipped:
        rows = read_qa(qa)
    assert [r.question for r in rows] == ["is this a clock?", "is this a coins?"] and skipped[0] == 0
    assert len(read_qa(qa)) == 6  # outside the block every row is read
    with pytest.raises(Exception, match="has no rows of split 'test': its rows carry train 4, dev 2"):
        with counting_skipped("test"):
            read_qa(qa)


def test_eval_vqa_split_in_the_json_line(qa, capsys):
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", "easy-vqa", "--split", "dev"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["split"] == "dev" and line["questions"] == 2 and line["skipped_rows"] == 0
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", "easy-vqa"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "split" not in line and line["questions"] == 6


def test_eval_retrieval_and_zeroshot_take_split(gallery, tmp_path, capsys):
    pairs = _write(tmp_path / "pairs.jsonl", [{"image": str(gallery / f"{n}.jpg"), "caption": f"a photo of a {n}",
                                               "split": "test" if i % 2 else "train"} for i, n in enumerate(NAMES)])
    assert cli.main(["eval", "retrieval", "--pairs", str(pairs), "--model", "lite", "--split", "test"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["split"] == "test" and line["images"] == 3
    labels = _write(tmp_path / "labels.jsonl", [{"image": str(gallery / f"{n}.jpg"), "label": n,
                                                 "split": "test" if i % 2 else "train"} for i, n in enumerate(NAMES)])
    assert cli.main(["eval", "zeroshot", "--labels-file", str(labels), "--model", "lite", "--split", "train"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["split"] == "train" and line["images"] == 3


def test_a_split_no_row_carries_or_nothing_to_filter_is_one_error(gallery, tmp_path, qa, capsys):
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", "easy-vqa", "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "has no rows of split 'val': its rows carry train 4, dev 2; pass one of those to --split" in err
    bare = _write(tmp_path / "bare.jsonl", [{"image": str(gallery / "cat.jpg"), "question": "q?", "answer": "yes"}])
    assert cli.main(["eval", "vqa", "--qa", str(bare), "--model", "easy-vqa", "--split", "dev"]) == 2
    assert 'its rows carry no "split" field' in capsys.readouterr().err
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\n" + "".join(f"{gallery / n}.jpg,a {n}\n" for n in NAMES))
    assert cli.main(["eval", "retrieval", "--pairs", str(csv), "--model", "lite", "--split", "dev"]) == 2
    assert "none of the data files given has one" in capsys.readouterr().err
