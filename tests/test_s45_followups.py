"""Follow-ups of stop 45's small fixes: numbers as /v1/vqa JSON choices, eval retrieval --out's error items for
unreadable photos, training's 'N of the M validation photos' warning counting only images. Each fails without its
fix."""

import base64
import io
import json
import logging
import os
import tarfile

import pytest

from polymodal import cli


class _Asker:
    """A VQA model that records the choices it is given."""

    name = key = "stub-vqa"

    def __init__(self):
        self.choices = []

    def answer(self, image, question, choices=None):
        self.choices.append(choices)
        return {"answer": "2", "score": 1.0, "alternatives": [("2", 1.0)]}


def test_vqa_json_choices_take_numbers_as_their_text(lite, db, gallery) -> None:
    # as a QA file's "choices" and answer(..., choices=[1, 2]) do: 2 and 2.0 are "2"; true/false stay refused
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    asker = _Asker()
    image = base64.b64encode((gallery / "cat.jpg").read_bytes()).decode()
    with TestClient(create_app(lite, db, vqa_model=asker)) as c:
        r = c.post("/v1/vqa", json={"image": image, "question": "how many?", "choices": [1, 2.0, "3", 2.5]})
        assert r.status_code == 200, r.text
        assert asker.choices == [["1", "2", "3", "2.5"]]
        r = c.post("/v1/vqa", json={"image": image, "question": "is it?", "choices": [True, False]})
        assert r.status_code == 400 and "must be a list of strings or numbers" in r.json()["error"]
        # the schema says so: a list of strings or numbers, or one comma-separated string
        schema = c.get("/openapi.json").json()["paths"]["/v1/vqa"]["post"]["requestBody"]["content"]
        choices = schema["application/json"]["schema"]["properties"]["choices"]
        # (stop 51: the list also says it holds at least one item, none blank)
        assert [o["items"]["type"] for o in choices["anyOf"] if o["type"] == "array"] == [["string", "number"]]
        # (stop 52: or null, "not sent", as in every optional JSON field)
        assert {"string", "null"} == {s["type"] for s in choices["anyOf"] if s["type"] != "array"}


def _eval_retrieval_items(pairs, out, lite, monkeypatch, capsys) -> tuple[dict, list[dict]]:
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    capsys.readouterr()
    assert cli.main(["eval", "retrieval", "--pairs", str(pairs), "--model", "lite", "--out", str(out), "--ci"]) == 0
    return json.loads(capsys.readouterr().out), [json.loads(line) for line in out.read_text().splitlines()]


def test_eval_retrieval_out_writes_error_items_for_an_unreadable_photo(gallery, tmp_path, capsys, lite,
                                                                      monkeypatch) -> None:
    # as eval zeroshot's, vqa's and captions' --out do: the photo (and each of its captions) is in the items, with
    # why, not silently missing
    (tmp_path / "bad.jpg").write_text("not an image")
    rows = [{"image": str(gallery / "cat.jpg"), "caption": "a cat"}, {"image": "bad.jpg", "caption": "broken"},
            {"image": "bad.jpg", "caption": "broken too"},
            {"image": str(gallery / "rocket.jpg"), "caption": "a rocket"},
            {"image": str(gallery / "coffee.jpg"), "caption": "a coffee"}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, items = _eval_retrieval_items(pairs, tmp_path / "items.jsonl", lite, monkeypatch, capsys)
    assert result["unreadable"] == 1 and result["images"] == 3 and result["captions"] == 3
    errors = [i for i in items if "error" in i]
    assert [(i["query"], i.get("caption"), os.path.basename(i["image"])) for i in errors] == [
        ("text", "broken", "bad.jpg"), ("text", "broken too", "bad.jpg"), ("image", None, "bad.jpg")]
    assert all("not a readable image" in i["error"] and "rank" not in i for i in errors)
    scored = [i for i in items if "rank" in i]
    assert len(scored) == 6 and len(items) == 9  # 3 captions and 3 photos scored, as before


def test_eval_retrieval_out_writes_an_error_item_for_an_unreadable_shard_member(gallery, tmp_path, capsys, lite,
                                                                                monkeypatch) -> None:
    # a shard member that does not decode is left out when the pairs are read (not by the encoder): same items
    def add(tf, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        for n in ("cat", "rocket"):
            add(tf, f"{n}.jpg", (gallery / f"{n}.jpg").read_bytes())
            add(tf, f"{n}.txt", f"a {n}".encode())
        add(tf, "b.jpg", b"not a jpeg at all")
        add(tf, "b.txt", b"broken")
    result, items = _eval_retrieval_items(tmp_path / "s.tar", tmp_path / "items.jsonl", lite, monkeypatch, capsys)
    assert result["unreadable"] == 1 and result["images"] == 2
    errors = [(i["query"], i.get("caption"), i["image"]) for i in items if "error" in i]
    assert errors == [("text", "broken", f"{tmp_path / 's.tar'}#b.jpg"), ("image", None, f"{tmp_path / 's.tar'}#b.jpg")]


def test_training_warning_counts_only_the_validation_photos_that_are_images(gallery, tmp_path, caplog) -> None:
    # as eval's "N of the M evaluated photos" counts (count_seen_photos): a file that is no image is left out of
    # validation as unreadable, so "1 of the 4" where 2 photos validate read as 2 more held-out photos
    from polymodal.training_photos import TrainingPhotos, photo_hash, write_training_photos

    write_training_photos(tmp_path / "model", {photo_hash(gallery / "cat.jpg")})
    (tmp_path / "bad.jpg").write_text("not an image")
    (tmp_path / "notes.txt").write_text("notes")
    val = [gallery / "cat.jpg", gallery / "coffee.jpg", tmp_path / "bad.jpg", tmp_path / "notes.txt",
           gallery / "cat.jpg"]  # (a photo listed twice counts once, as before)
    with caplog.at_level(logging.WARNING):
        TrainingPhotos([gallery / "rocket.jpg"], str(tmp_path / "model"), val)
    assert "1 of the 2 validation photos are photos the model training starts from" in caplog.text
