"""COCO's caption annotations and Karpathy's split files read as pairs, as downloaded."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from conftest import shared_data
from polymodal.cli import main
from polymodal.data.jsonl import counting_skipped
from polymodal.data.pairs import read_pair_source


def _photos(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:012d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        Image.new("RGB", (40, 40), (i * 60, 20, 20)).save(folder / name)
    return names


def _coco(path: Path, names: list[str], captions: dict, indent=None) -> None:
    document = {"info": {"year": 2017}, "licenses": [],
                "images": [{"id": 100 + i, "file_name": n, "width": 40, "height": 40} for i, n in enumerate(names)],
                "annotations": [{"id": k, "image_id": image_id, "caption": c}
                                for k, (image_id, c) in enumerate(captions.items())]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=indent))


@pytest.mark.parametrize("indent", [None, 2])
def test_coco_layout_finds_photos_beside_annotations(tmp_path, indent):
    names = _photos(tmp_path / "val2017", 3)
    captions = {100: "a dark square", 101: "a red square", 102: "a bright red square", 999: "no such photo"}
    _coco(tmp_path / "annotations" / "captions_val2017.json", names, captions, indent)
    pairs = read_pair_source(tmp_path / "annotations" / "captions_val2017.json")
    assert [(p.image.name, p.caption) for p in pairs.pairs] == list(zip(names, list(captions.values())[:3]))
    assert all(p.image.parent == (tmp_path / "val2017").resolve() for p in pairs.pairs)
    assert len(pairs.skipped) == 1 and 'image_id 999 is the "id" of no entry' in pairs.skipped[0][1]
    assert pairs.skipped[0][0].endswith("captions_val2017.json:4")  # the annotation's number


def test_coco_photos_beside_the_file(tmp_path):
    names = _photos(tmp_path, 2)
    _coco(tmp_path / "caps.json", names, {100: "one", 101: "two"})
    pairs = read_pair_source(tmp_path / "caps.json")
    assert [p.image for p in pairs.pairs] == [(tmp_path / n).resolve() for n in names]


def test_karpathy_split_and_sentences(tmp_path):
    names = _photos(tmp_path / "Flicker8k_Dataset", 3)
    document = {"dataset": "flickr8k", "images": [
        {"filepath": "Flicker8k_Dataset", "filename": n, "split": ("train", "val", "test")[i],
         "sentences": [{"raw": f"photo {i} first", "tokens": []}, {"raw": f"photo {i} second"}]}
        for i, n in enumerate(names)]}
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(document))
    pairs = read_pair_source(tmp_path / "dataset_flickr8k.json")
    assert len(pairs.images) == 3 and len(pairs.pairs) == 6
    with counting_skipped("test"):
        test = read_pair_source(tmp_path / "dataset_flickr8k.json")
    assert [p.caption for p in test.pairs] == ["photo 2 first", "photo 2 second"]


def test_other_json_object_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text('{\n  "image": "a.jpg",\n  "caption": "x"\n}\n')
    assert main(["eval", "retrieval", "--pairs", str(tmp_path / "cfg.json"), "--model", "lite"]) == 2
    err = capsys.readouterr().err
    assert "is one JSON object, not rows of objects" in err and "Traceback" not in err


def test_jsonl_with_a_broken_first_row_stays_rows(tmp_path):
    _photos(tmp_path, 1)
    (tmp_path / "p.jsonl").write_text('{"image": "000000000000.jpg", "caption": \n'
                                      '{"image": "000000000000.jpg", "caption": "a square"}\n')
    pairs = read_pair_source(tmp_path / "p.jsonl")
    assert len(pairs.pairs) == 1 and "bad JSON" in pairs.skipped[0][1]


def test_real_coco_pairs_read_the_same_as_coco_json(tmp_path):
    """COCO-mini's pairs.jsonl rewritten as COCO's own annotation file gives the same pairs."""
    root = shared_data("coco-mini-train")
    rows = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines() if line.strip()]
    ids = {row["image"]: row["image_id"] for row in rows}
    document = {"images": [{"id": i, "file_name": Path(image).name} for image, i in ids.items()],
                "annotations": [{"id": k, "image_id": row["image_id"], "caption": row["caption"]}
                                for k, row in enumerate(rows)]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(document))
    os.symlink(root / "train2017", tmp_path / "train2017")
    from_coco = read_pair_source(tmp_path / "annotations" / "captions_train2017.json")
    from_rows = read_pair_source(root / "pairs.jsonl")
    assert len(from_coco.pairs) == len(from_rows.pairs) == 400
    assert [(p.image.name, p.caption) for p in from_coco.pairs] == [(p.image.name, p.caption) for p in from_rows.pairs]


def test_a_hand_edited_coco_file_with_list_ids_is_rows_skipped_not_a_traceback(tmp_path):
    names = _photos(tmp_path, 2)
    document = {"images": [{"id": 1, "file_name": names[0]}, {"id": [2], "file_name": names[1]}],
                "annotations": [{"image_id": 1, "caption": "one"}, {"image_id": [2], "caption": "two"},
                                {"image_id": {"x": 1}, "caption": "three"}]}
    (tmp_path / "caps.json").write_text(json.dumps(document))
    pairs = read_pair_source(tmp_path / "caps.json")
    assert [p.caption for p in pairs.pairs] == ["one"] and len(pairs.skipped) == 2


def test_a_missing_photo_in_cocos_layout_is_named_where_it_was_looked_for(tmp_path):
    names = _photos(tmp_path / "val2017", 2)
    captions = {100: "one", 101: "two"}
    _coco(tmp_path / "annotations" / "captions_val2017.json", names + ["000000000099.jpg"], {**captions, 102: "gone"})
    pairs = read_pair_source(tmp_path / "annotations" / "captions_val2017.json")
    assert len(pairs.pairs) == 2 and len(pairs.skipped) == 1
    why = pairs.skipped[0][1]
    assert str((tmp_path / "val2017" / "000000000099.jpg").resolve()) in why and "/../" not in why
