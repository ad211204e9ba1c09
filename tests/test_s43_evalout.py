"""Review of what evaluation says beyond the headline figure (stop 43): eval zeroshot --out's per-row "predicted"
class, and the trained-on-these-photos caveat for a --model path written with ~."""

import json
import logging
import shutil

import numpy as np

from polymodal import cli
from polymodal.eval.zeroshot import zeroshot_accuracy
from polymodal.training_photos import (count_seen_photos, model_folder, photo_hash, seen_flags,
                                       write_training_photos)


class TiedClasses:
    """Every class embeds alike (as emoji labels do in lite's text tower, read as one unknown token)."""

    def encode_image(self, images):
        raise AssertionError("image_emb is given")

    def encode_text(self, texts):
        return np.ones((len(texts), 4), dtype=np.float32) / 2

    def label_embeddings(self, classes, templates):
        return np.ones((len(classes), 4), dtype=np.float32) / 2


def test_zeroshot_predicted_never_names_the_label_of_a_row_scored_as_a_miss() -> None:
    items: list = []
    emb = np.eye(4, dtype=np.float32)[[0, 1, 2]]
    out = zeroshot_accuracy(TiedClasses(), ["a.jpg", "b.jpg", "c.jpg"], ["ant", "bee", "cat"],
                            templates=("a photo of a {}.",), image_emb=emb, details=items)
    assert out["top1"] == 0.0  # a tie counts against the image
    # before: "predicted" was the first class by name ("ant"), so the ant row read predicted == label, a hit,
    # while its rank (3) and top1 count it as a miss
    assert [item["rank"] for item in items] == [3, 3, 3]
    assert all(item["predicted"] != item["label"] for item in items)


def test_zeroshot_predicted_is_the_label_exactly_when_rank_is_1() -> None:
    class Separate(TiedClasses):
        def label_embeddings(self, classes, templates):
            return np.eye(len(classes), 4, dtype=np.float32)

    items: list = []
    # right; then "bee" scored below "cat"; then "cat" below "bee" (no ties)
    emb = np.array([[1, 0, 0, 0], [0, 0.5, 1, 0], [0, 1, 0.5, 0]], dtype=np.float32)
    zeroshot_accuracy(Separate(), ["a", "b", "c"], ["ant", "bee", "cat"], templates=("{}",), image_emb=emb,
                      details=items)
    assert [(i["predicted"], i["rank"]) for i in items] == [("ant", 1), ("cat", 2), ("bee", 2)]


def test_a_model_path_with_tilde_still_reports_the_photos_it_was_trained_on(gallery, tmp_path, monkeypatch,
                                                                           caplog) -> None:
    # `--model=~/runs/x/model` (no shell expands ~ after "--model=") loads that model; the training-photo record
    # beside it was looked up under a folder literally named "~" and silently not found: seen_in_training null
    monkeypatch.setenv("HOME", str(tmp_path))
    write_training_photos(tmp_path / "mine", {photo_hash(gallery / "cat.jpg")})
    with caplog.at_level(logging.WARNING):
        assert count_seen_photos("~/mine", [gallery / "cat.jpg", gallery / "rocket.jpg"]) == (1, 0)
    assert "trained on" in caplog.text
    assert seen_flags("~/mine", [gallery / "cat.jpg", gallery / "rocket.jpg"]) == [(True, False), (False, False)]


def test_eval_retrieval_with_a_tilde_model_marks_items_seen(gallery, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(model_folder("default"), tmp_path / "mine")  # a saved model; its record replaced below
    write_training_photos(tmp_path / "mine", {photo_hash(gallery / "cat.jpg")})
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat", "rocket"):
        shutil.copyfile(gallery / f"{name}.jpg", photos / f"{name}.jpg")
    (photos / "pairs.jsonl").write_text("".join(json.dumps({"image": f"{n}.jpg", "caption": f"a {n}"}) + "\n"
                                                for n in ("cat", "rocket")))
    out = tmp_path / "items.jsonl"
    assert cli.main(["eval", "retrieval", "--pairs", str(photos / "pairs.jsonl"), "--model", "~/mine",
                     "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["seen_in_training"], line["seen_in_validation"]) == (1, 0)
    items = [json.loads(row) for row in out.read_text().splitlines()]
    assert {(i["query"], i["image"].rsplit("/", 1)[-1], i["seen_in_training"]) for i in items} == {
        ("text", "cat.jpg", True), ("text", "rocket.jpg", False), ("image", "cat.jpg", True),
        ("image", "rocket.jpg", False)}
