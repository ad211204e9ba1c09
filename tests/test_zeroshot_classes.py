"""`eval zeroshot --classes FILE`: the candidates are a fixed list (all of a dataset's classes), not whatever labels a
sample holds; balanced_top1 weighs each label alike."""

import json
import logging

import numpy as np
import pytest

from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.eval.zeroshot import keep_candidates, read_classes, zeroshot_accuracy


def test_classes_file_lines_or_json_trimmed_and_kept_once(tmp_path) -> None:
    lines = tmp_path / "classes.txt"
    lines.write_text("# COCO\ncat\n\n  dog \nCat\nhot  dog\n")
    assert read_classes(lines) == ["cat", "dog", "hot dog"]
    as_json = tmp_path / "classes.json"
    as_json.write_text(json.dumps(["cat", "dog"]))
    assert read_classes(as_json) == ["cat", "dog"]
    as_json.write_text(json.dumps(["cat", 1]))
    with pytest.raises(PolymodalError, match="must be a list of names"):
        read_classes(as_json)
    lines.write_text("cat\n")
    with pytest.raises(PolymodalError, match="names 1 class;"):
        read_classes(lines)
    lines.write_text('{"image": "a.jpg", "label": "cat"}\n')
    with pytest.raises(PolymodalError, match="holds JSON objects, not class names"):
        read_classes(lines)


def test_rows_outside_the_classes_are_left_out_and_counted(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        images, labels, left = keep_candidates(["a", "b", "c"], ["Cat", "zebra", "dog"], ["cat", "dog"], "f.jsonl")
    assert (images, labels, left) == (["a", "c"], ["cat", "dog"], 1) and "'zebra'" in caplog.text
    with pytest.raises(PolymodalError, match="no label"):
        keep_candidates(["a"], ["zebra"], ["cat", "dog"], "f.jsonl")


class ByName:
    """Embeds a class prompt, and an image named like a class, to that class's axis: a perfect classifier."""

    names = ["cat", "dog", "rocket", "flower"]
    dim = 4

    def label_embeddings(self, classes, templates):
        return np.eye(4)[[self.names.index(c) for c in classes]]

    def encode_image(self, images):
        return np.eye(4)[[self.names.index(str(i)) for i in images]]

    def encode_text(self, texts):
        raise AssertionError("not used")


def test_the_given_classes_are_the_candidates_and_balanced_top1_weighs_labels_alike() -> None:
    model = ByName()
    emb = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0.9, 0, 0.1]])  # every image right
    out = zeroshot_accuracy(model, ["x"] * 4, ["cat", "cat", "cat", "dog"], image_emb=emb, classes=ByName.names)
    assert out["classes"] == 4 and out["top1"] == 1.0 and out["balanced_top1"] == 1.0
    emb[3] = [0, 0, 0, 1.0]  # the dog is taken for a flower, a class no image is labelled with
    out = zeroshot_accuracy(model, ["x"] * 4, ["cat", "cat", "cat", "dog"], image_emb=emb, classes=ByName.names)
    assert out["top1"] == 0.75 and out["balanced_top1"] == 0.5
    with pytest.raises(PolymodalError, match="not among the classes"):
        zeroshot_accuracy(model, ["x"], ["zebra"], image_emb=emb[:1], classes=ByName.names)


def test_cli_takes_classes_for_a_one_class_sample(gallery, tmp_path, capsys, lite, monkeypatch) -> None:
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"image": str(gallery / "cat.jpg"), "label": "cat"}) + "\n"
                      + json.dumps({"image": str(gallery / "rocket.jpg"), "label": "zebra"}) + "\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\nrocket\ncoffee cup\n")
    assert cli.main(["eval", "zeroshot", "--labels-file", str(labels), "--classes", str(classes),
                     "--model", "lite"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["classes"], result["images"], result["skipped_rows"]) == (3, 1, 1)
    assert cli.main(["eval", "zeroshot", "--labels-file", str(labels), "--classes", str(classes),
                     "--model", "lite", "--strict"]) == 2
    assert "--strict: 1 skipped row" in capsys.readouterr().err


def test_python_classes_match_labels_in_any_case_as_the_cli_does() -> None:
    emb = np.eye(4)[[0, 1]]
    out = zeroshot_accuracy(ByName(), ["x", "y"], ["Cat", "DOG"], image_emb=emb, classes=ByName.names)
    assert out["top1"] == 1.0 and out["photos"] == 2 and out["unreadable"] == 0


def test_photos_with_several_labels_are_warned_of_and_counted_apart(gallery, tmp_path, caplog) -> None:
    from polymodal.eval.zeroshot import read_labelled_images

    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "label": label}) + "\n"
                              for n, label in (("cat", "cat"), ("cat", "pet"), ("rocket", "rocket"))))
    with caplog.at_level(logging.WARNING):
        images, _ = read_labelled_images(labels)
    assert "1 photo carries several labels (2 rows)" in caplog.text and "main class" in caplog.text
    out = zeroshot_accuracy(ByName(), images, ["cat", "cat", "rocket"], image_emb=np.eye(4)[[0, 0, 2]])
    assert (out["images"], out["photos"]) == (3, 2)


def test_two_spellings_of_a_class_are_one_candidate() -> None:
    emb = np.eye(4)[[0, 1]]
    out = zeroshot_accuracy(ByName(), ["x", "y"], ["cat", "dog"], image_emb=emb, classes=["cat", "CAT", "dog"])
    assert out["classes"] == 2 and out["top1"] == 1.0
