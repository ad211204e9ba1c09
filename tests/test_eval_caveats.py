"""What an evaluation's figures rest on: the photos a model was trained on (recorded beside it, warned of when
scored), rows skipped while reading, sets too small for a metric, and zero-shot labels that are not class names."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

from polymodal import cli
from polymodal.data.jsonl import counting_skipped
from polymodal.data.pairs import read_pair_source
from polymodal.eval.caveats import warn_of_certain_recall
from polymodal.eval.retrieval import encode_captions
from polymodal.eval.zeroshot import read_labelled_images
from polymodal.training_photos import (TrainingPhotos, count_seen_photos, photo_hash, read_training_photos,
                                       write_training_photos)

ROOT = Path(__file__).resolve().parents[1]


class SavesConfig:
    def save(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text("{}")


def test_a_saved_model_records_its_training_photos_and_inherits_its_starting_models(gallery, tmp_path) -> None:
    cat, rocket, coffee = gallery / "cat.jpg", gallery / "rocket.jpg", gallery / "coffee.jpg"
    TrainingPhotos([cat, rocket]).save(SavesConfig(), tmp_path / "first")
    assert read_training_photos(tmp_path / "first") == {photo_hash(cat), photo_hash(rocket)}
    TrainingPhotos([coffee], start=str(tmp_path / "first")).save(SavesConfig(), tmp_path / "second")
    assert read_training_photos(tmp_path / "second") == {photo_hash(p) for p in (cat, rocket, coffee)}
    assert read_training_photos(tmp_path / "nothing-here") is None
    assert read_training_photos("lite") is None  # no folder: nothing recorded, not "nothing seen"


def test_overlap_is_counted_by_content_so_a_renamed_copy_counts(gallery, tmp_path, caplog) -> None:
    write_training_photos(tmp_path / "model", {photo_hash(gallery / "cat.jpg")})
    renamed = tmp_path / "kitty.jpg"
    shutil.copyfile(gallery / "cat.jpg", renamed)
    with caplog.at_level(logging.WARNING):
        assert count_seen_photos(str(tmp_path / "model"), [renamed, gallery / "rocket.jpg"])[0] == 1
    assert "1 of the 2 evaluated photos" in caplog.text and "optimistic" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert count_seen_photos(str(tmp_path / "model"), [gallery / "rocket.jpg"])[0] == 0
    assert caplog.text == ""
    assert photo_hash(tmp_path / "gone.jpg") is None and photo_hash(renamed.read_bytes()) == photo_hash(renamed)


@pytest.mark.parametrize("name", ["default", "captioner", "coco-yesno", "easy-vqa"])
def test_every_trained_built_in_records_its_training_photos(name) -> None:
    assert len(read_training_photos(name)) >= 1000


def test_built_ins_know_the_shared_photos_they_were_trained_on() -> None:
    flickr = read_pair_source(shared_data("flickr8k-dev") / "pairs.jsonl").images[:50]
    assert count_seen_photos("default", flickr)[0] == 50
    assert count_seen_photos("captioner", flickr)[0] == 50
    assert count_seen_photos("easy-vqa", flickr)[0] == 0


def test_easy_vqa_test_photos_are_not_its_training_photos() -> None:
    easy_vqa = pytest.importorskip("easy_vqa")
    test_paths = easy_vqa.get_test_image_paths()
    paths = list(test_paths.values() if isinstance(test_paths, dict) else test_paths)[:200]
    assert count_seen_photos("easy-vqa", paths)[0] == 0


def test_ship_model_copies_the_training_photos(gallery, tmp_path, monkeypatch) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import ship_model
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from safetensors.torch import save_file
    import torch

    src = tmp_path / "run" / "model"
    src.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"type": "dual_encoder"}))
    write_training_photos(src, {photo_hash(gallery / "cat.jpg")})
    monkeypatch.setattr(ship_model, "HERE", tmp_path / "shipped")
    assert ship_model.main(str(src), "mine") == 0
    assert read_training_photos(tmp_path / "shipped" / "mine") == {photo_hash(gallery / "cat.jpg")}


def test_record_script_writes_the_list_and_refuses_a_non_model(gallery, tmp_path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": n}) + "\n"
                             for n in ("cat", "rocket")))
    (tmp_path / "model").mkdir()
    script = str(ROOT / "scripts" / "record_training_photos.py")
    done = subprocess.run([sys.executable, script, str(tmp_path / "model"), "--pairs", str(pairs)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_training_photos(tmp_path / "model") == {photo_hash(gallery / f"{n}.jpg") for n in ("cat", "rocket")}
    bad = subprocess.run([sys.executable, script, str(tmp_path / "nope"), "--pairs", str(pairs)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "is not a model folder" in bad.stderr and "Traceback" not in bad.stderr


def test_counting_skipped_counts_only_inside_its_block(gallery, tmp_path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": str(gallery / "cat.jpg"), "caption": "a cat"}) + "\n"
                     + json.dumps({"img": "x.jpg", "caption": "wrong key"}) + "\nnot json\n"
                     + json.dumps({"image": "missing.jpg", "caption": "gone"}) + "\n")
    with counting_skipped() as outer:
        with counting_skipped() as inner:
            read_pair_source(pairs)
        read_pair_source(pairs)
    assert inner == [3] and outer == [6]
    read_pair_source(pairs)  # outside any block: no tally left open
    assert outer == [6]


def _labels_file(tmp_path, gallery, rows) -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "label": label}) + "\n" for n, label in rows))
    return path


def test_zeroshot_labels_are_class_names_one_spelling_each(gallery, tmp_path, caplog) -> None:
    rows = [("cat", "cat "), ("coffee", "Cat"), ("rocket", "cat"), ("motorcycle", "rocket"), ("flower", ["a", "b"]),
            ("astronaut", 0)]
    with caplog.at_level(logging.WARNING), counting_skipped() as skipped:
        images, labels = read_labelled_images(_labels_file(tmp_path, gallery, rows))
    assert labels == ["cat", "cat", "cat", "rocket"]  # "cat " trimmed; "Cat" joins the more common "cat"
    assert skipped == [2] and "must be a class name" in caplog.text
    assert "'Cat' counted as 'cat'" in caplog.text


def test_a_tie_in_spellings_keeps_the_first(gallery, tmp_path) -> None:
    _, labels = read_labelled_images(_labels_file(tmp_path, gallery, [("cat", "Dog"), ("coffee", "dog"),
                                                                      ("rocket", "cup")]))
    assert labels == ["Dog", "Dog", "cup"]


@pytest.mark.parametrize("images, captions, said", [
    (5, 25, "t2i_R@5, t2i_R@10 are 1.0 by construction"),
    (30, 5, "i2t_R@5, i2t_R@10 are 1.0 by construction"),
    (10, 50, "t2i_R@10 is 1.0 by construction with 10 images and 50 captions"),
    (11, 55, None)])
def test_certain_recall_is_named(caplog, images, captions, said) -> None:
    with caplog.at_level(logging.WARNING):
        warn_of_certain_recall(images=images, captions=captions)
    if said is None:
        assert caplog.text == ""
    else:
        other = "i2t" if said.startswith("t2i") else "t2i"
        assert said in caplog.text and other not in caplog.text


def test_encode_captions_in_chunks_equals_one_pass(lite) -> None:
    texts = [f"a photo of {n} cats" for n in range(7)]
    assert np.allclose(encode_captions(lite, texts, chunk=3), lite.encode_text(texts), atol=1e-6)


def test_eval_json_counts_skipped_rows_and_seen_photos(gallery, tmp_path, capsys, caplog, lite, monkeypatch) -> None:
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    rows = [("cat", "cat"), ("coffee", "coffee"), ("rocket", "rocket")]
    path = _labels_file(tmp_path, gallery, rows)
    with path.open("a") as f:
        f.write(json.dumps({"image": "missing.jpg", "label": "cat"}) + "\n")
    with caplog.at_level(logging.WARNING):
        assert cli.main(["eval", "zeroshot", "--labels-file", str(path), "--model", "lite"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped_rows"] == 1 and result["seen_in_training"] is None and result["images"] == 3
    assert "top5 is 1.0 by construction with 3 classes" in caplog.text and "only 3 photos" in caplog.text


def test_repeated_rows_count_once_in_vqa_and_zeroshot(gallery, tmp_path) -> None:
    from polymodal.eval.vqa import read_qa

    qa = tmp_path / "qa.jsonl"
    row = {"image": str(gallery / "cat.jpg"), "question": "is there a cat?", "answer": "yes"}
    qa.write_text("".join(json.dumps(r) + "\n" for r in (row, row, {**row, "answer": "no"})))
    with counting_skipped() as skipped:
        assert [r.answer for r in read_qa(qa)] == ["yes", "no"]  # another answer is another row
    assert skipped == [1]
    with counting_skipped() as skipped:
        images, labels = read_labelled_images(_labels_file(tmp_path, gallery, [("cat", "cat"), ("cat", "Cat "),
                                                                              ("cat", "pet"), ("rocket", "rocket")]))
    assert labels == ["cat", "pet", "rocket"] and skipped == [1]


def test_rows_of_several_splits_are_named(gallery, tmp_path, caplog) -> None:
    from polymodal.eval.vqa import read_qa

    qa = tmp_path / "qa.jsonl"
    row = {"image": str(gallery / "cat.jpg"), "question": "is there a cat?", "answer": "yes"}
    qa.write_text("".join(json.dumps({**row, "question": f"q{n}?", "split": s}) + "\n"
                          for n, s in enumerate(["train", "train", "dev"])))
    with caplog.at_level(logging.WARNING):
        assert len(read_qa(qa)) == 3
    assert "2 split values (train 2, dev 1)" in caplog.text and "select(.split == \"dev\")" in caplog.text
    caplog.clear()
    qa.write_text("".join(json.dumps({**row, "question": f"q{n}?", "split": "dev"}) + "\n" for n in range(2)))
    with caplog.at_level(logging.WARNING):
        read_qa(qa)
    assert "split" not in caplog.text


def test_the_split_filter_suggested_for_a_json_array_reads_the_array(gallery, tmp_path, caplog) -> None:
    from polymodal.eval.vqa import read_qa

    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"image": str(gallery / "cat.jpg"), "question": f"q{n}?", "answer": "yes", "split": s}
                              for n, s in enumerate(["train", "dev", "dev"])]))
    with caplog.at_level(logging.WARNING):
        read_qa(qa)
    # the held-out split, written to a new file beside this one (never over it, whatever the file is called)
    assert "jq -c '.[] | select(.split == \"dev\")'" in caplog.text and str(tmp_path / "qa.dev.jsonl") in caplog.text


def test_a_row_in_two_files_counts_once_and_is_said(gallery, tmp_path, caplog) -> None:
    from polymodal.data.pairs import read_pair_sources
    from polymodal.eval.vqa import read_qa

    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"image": str(gallery / "cat.jpg"), "question": "a cat?", "answer": "yes"}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": str(gallery / "cat.jpg"), "caption": "a cat"}) + "\n")
    with caplog.at_level(logging.WARNING), counting_skipped() as skipped:
        assert len(read_qa([qa, qa])) == 1
        assert len(read_pair_sources([pairs, pairs]).pairs) == 1
    assert skipped == [2] and caplog.text.count("skipped 1 repeated row") == 2


@pytest.mark.parametrize("held", ["valid", "test-dev", "Test", "minival"])
def test_the_suggested_split_is_the_held_out_one_whatever_its_spelling(gallery, tmp_path, caplog, held) -> None:
    from polymodal.eval.vqa import read_qa

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"image": str(gallery / "cat.jpg"), "question": f"q{n}?", "answer": "yes",
                                      "split": s}) + "\n" for n, s in enumerate(["train", "train", held])))
    with caplog.at_level(logging.WARNING):
        read_qa(qa)
    assert f'select(.split == "{held}")' in caplog.text
