"""A query, question or label of zero-width or other format characters alone ("\u200b", a BOM) shows nothing and
holds no word a tokenizer finds, yet str.strip() keeps it: it passed the blank checks and got confident answers to
nothing. It is refused as blank, like an empty one, everywhere a blank one is."""

import base64

import pytest

from polymodal import cli
from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError

INVISIBLE = ["\u200b", "\ufeff", " \u2060\u200b ", "\u200e"]


@pytest.mark.parametrize("text", ["", " \t\n", *INVISIBLE])
def test_is_blank(text):
    assert is_blank(text)


@pytest.mark.parametrize("text", ["a", "\u200bdog", "猫", "٣", "\u200b.\u200b"])
def test_not_blank(text):
    assert not is_blank(text)


def test_cli_search_refuses_an_invisible_query(db, capsys):
    assert cli.main(["search", "\u200b", "--db", str(db)]) == 2
    assert "the text query is empty" in capsys.readouterr().err


def test_python_questions_and_labels(easy_vqa, lite, gallery):
    with pytest.raises(PolymodalError, match="the question is empty"):
        easy_vqa.answer(gallery / "cat.jpg", "\u200b")
    with pytest.raises(PolymodalError, match="question 1 is empty"):
        easy_vqa.predict([gallery / "cat.jpg"] * 2, ["what shape is it?", "\ufeff"])
    with pytest.raises(PolymodalError, match="label 1 is empty"):
        lite.classify([gallery / "cat.jpg"], ["cat", "\u200b"])


def test_server_refuses_invisible_text(lite, db, gallery):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from polymodal.serve import create_app

    with TestClient(create_app(lite, db)) as c:
        r = c.post("/v1/search", json={"text": "\u200b", "k": 2})
        assert r.status_code == 400 and "blank" in r.json()["error"]
        image = base64.b64encode((gallery / "cat.jpg").read_bytes()).decode()
        r = c.post("/v1/classify", json={"image": image, "labels": ["cat", "\u200b"]})
        assert r.status_code == 400 and "label 1 is empty" in r.json()["error"]
