"""Long CLI work shows a bar on stderr, as `index` does: `classify` over a folder's worth of photos (or a long label
list), `search --texts` over a long file the first time, `eval vqa` with a model outside the feature cache
(coco-yesno, ONNX exports). Each printed nothing until done. No bar with --json (classify, search) or for a few."""

import json

import pytest

import polymodal
from polymodal import cli


@pytest.fixture
def shared_lite(lite, monkeypatch):
    monkeypatch.setattr(polymodal, "load", lambda *a, **k: lite)  # the session's lite: no second load per call
    return lite


def _classify(capsys, *argv):
    code = cli.main(["classify", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_many_photos_show_a_bar_and_every_photo_is_still_classified(gallery, shared_lite, capsys):
    photos = sorted(gallery.glob("*.jpg"))
    many = (photos * (cli.CLASSIFY_BATCH // len(photos) + 2))[: cli.CLASSIFY_BATCH + 5]
    out, err = _classify(capsys, *many, "--labels", "cat,rocket", "--json")
    assert "classifying" not in err  # --json: no bar
    rows = json.loads(out)
    assert [r["image"] for r in rows] == [str(p) for p in many] and all("labels" in r for r in rows)
    out, err = _classify(capsys, *many, "--labels", "cat,rocket")
    assert "classifying: 100%" in err and f"{len(many)}/{len(many)}" in err
    assert out.count("label") == len(many)  # one table per photo


def test_a_few_photos_show_no_bar(gallery, shared_lite, capsys):
    _, err = _classify(capsys, gallery / "cat.jpg", gallery / "rocket.jpg", "--labels", "cat,rocket")
    assert "classifying" not in err and "class prompts" not in err


def test_a_long_label_list_shows_a_bar_for_its_prompts(gallery, shared_lite, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing number {i}\n" for i in range(cli.CLASSIFY_BATCH + 1)))
    out, err = _classify(capsys, gallery / "cat.jpg", "--labels-from", labels, "--top-k", "2")
    assert "class prompts: 100%" in err and "classifying" not in err


def test_search_texts_shows_a_bar_the_first_time_a_long_file_is_embedded(gallery, shared_lite, tmp_path, capsys,
                                                                           monkeypatch):
    from polymodal.apps import text_search

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    # a file longer than one chunk of the bar, its size aside: chunks of 64 (a multiple of encode_text's batches, as
    # the 1,024 texts are), not 1,034 texts embedded twice
    monkeypatch.setattr(text_search, "_ENCODE_CHUNK", 64)
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a caption, number {i}\n" for i in range(text_search._ENCODE_CHUNK + 10)))
    assert cli.main(["search", "a cat", "--texts", str(texts), "--model", "lite", "-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert "texts: 100%" in err and "a caption, number" in out
    assert cli.main(["search", "a cat", "--texts", str(texts), "--model", "lite", "-k", "1"]) == 0
    assert "texts:" not in capsys.readouterr().err  # cached: nothing to embed
    texts.write_text(texts.read_text() + "one more line\n")
    assert cli.main(["search", "a cat", "--texts", str(texts), "--model", "lite", "-k", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "texts:" not in err and json.loads(out)[0]["rank"] == 1


def test_eval_vqa_with_a_model_outside_the_feature_cache_shows_a_bar(gallery, tmp_path, capsys):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "question": f"is there a {n}?",
                                      "answer": "yes"}) + "\n" for n in ("cat", "rocket", "coffee")))
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", "coco-yesno"]) == 0
    out, err = capsys.readouterr()
    assert "questions: 100%" in err and "3/3" in err
    assert json.loads(out.strip().splitlines()[-1])["count"] == 3
