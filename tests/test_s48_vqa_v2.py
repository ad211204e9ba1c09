"""VQA v2's files as downloaded (stop 48): `--qa` takes the questions file, finds the annotations file of its split
and COCO's photos where the VQA download and COCO put them, and reads rows with the ten annotators' answers."""

import json

import pytest
from PIL import Image

from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa

SPLIT = "val2014"


def _vqa_v2(root, questions_dir, annotations_dir, photos_dir, indent=None, photos=(42, 7)):
    """VQA v2's two files (one line each, as downloaded, unless indent) and COCO photos named as COCO 2014's."""
    for folder in (questions_dir, annotations_dir, photos_dir):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id in photos:
        Image.new("RGB", (32, 32), "red").save(root / photos_dir / f"COCO_{SPLIT}_{image_id:012d}.jpg")
    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": SPLIT, "questions": [
        {"image_id": 42, "question": "Is it red?", "question_id": 42000},
        {"image_id": 7, "question": "How many cats?", "question_id": 7001},
        {"image_id": 7, "question": "Lost?", "question_id": 7002}]}  # no annotation: skipped, named
    annotations = {"info": {}, "data_subtype": SPLIT, "annotations": [
        {"question_id": 42000, "image_id": 42, "answer_type": "yes/no", "multiple_choice_answer": "yes",
         "answers": [{"answer": "yes" if k < 8 else "no", "answer_confidence": "yes", "answer_id": k + 1}
                     for k in range(10)]},
        {"question_id": 7001, "image_id": 7, "answer_type": "number", "multiple_choice_answer": "2",
         "answers": [{"answer": "2" if k < 6 else "two", "answer_confidence": "maybe", "answer_id": k + 1}
                     for k in range(10)]}]}
    q = root / questions_dir / f"v2_OpenEnded_mscoco_{SPLIT}_questions.json"
    q.write_text(json.dumps(questions, indent=indent))
    (root / annotations_dir / f"v2_mscoco_{SPLIT}_annotations.json").write_text(json.dumps(annotations, indent=indent))
    return q


@pytest.mark.parametrize("layout, indent", [
    (("Questions", "Annotations", "Images/mscoco/val2014"), None),  # the VQA tools' folders
    ((".", ".", "val2014"), 2),  # all in one folder, pretty-printed
    (("vqa", "vqa", "val2014"), None),  # COCO's val2014/ beside the VQA folder
])
def test_the_questions_file_reads_with_its_annotations_and_photos(tmp_path, caplog, layout, indent):
    questions = _vqa_v2(tmp_path, *layout, indent=indent)
    rows = read_qa(questions)
    photos = (tmp_path / layout[2]).resolve()
    assert [(r.image, r.question, r.answer, r.type) for r in rows] == [
        (photos / "COCO_val2014_000000000042.jpg", "Is it red?", "yes", "yes/no"),
        (photos / "COCO_val2014_000000000007.jpg", "How many cats?", "2", "number")]
    assert sorted(rows[0].answers) == ["no"] * 2 + ["yes"] * 8 and sorted(rows[1].answers) == ["2"] * 6 + ["two"] * 4
    assert "question_id 7002 has no annotation" in caplog.text


def test_what_it_cannot_find_is_one_error_naming_where_it_looked(tmp_path):
    questions = _vqa_v2(tmp_path, "Questions", "Annotations", "Images/mscoco/val2014")
    with pytest.raises(PolymodalError, match=r"VQA v2's annotations file; pass its questions file"):
        read_qa(tmp_path / "Annotations" / f"v2_mscoco_{SPLIT}_annotations.json")
    (tmp_path / "Images" / "mscoco" / SPLIT).rename(tmp_path / "elsewhere")
    with pytest.raises(PolymodalError, match=rf"no folder {SPLIT}/ found at .*Images/mscoco/{SPLIT}"):
        read_qa(questions)
    (tmp_path / "Annotations" / f"v2_mscoco_{SPLIT}_annotations.json").unlink()
    with pytest.raises(PolymodalError, match=r"answers are in v2_mscoco_val2014_annotations.json, found neither"):
        read_qa(questions)


def test_eval_vqa_scores_the_downloaded_files(tmp_path, capsys):
    questions = _vqa_v2(tmp_path, "Questions", "Annotations", "Images/mscoco/val2014")
    assert cli.main(["eval", "vqa", "--qa", str(questions), "--model", "easy-vqa"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["questions"] == 2 and set(result["per_type"]) == {"yes/no", "number"}
