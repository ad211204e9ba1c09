"""Stop 54, what users type or feed as text: texts and labels files in UTF-16 or with lines of invisible characters,
a long VQA question warned of twice, and texts the English text tower reads as fragments (Russian, Arabic: letter by
letter; French or German over many texts) embedded with no word."""

import logging

import pytest

from polymodal import cli, registry
from polymodal.apps.text_search import read_text_lines
from polymodal.errors import PolymodalError

RUSSIAN = "коричневая собака бежит по зелёной траве"
FRENCH = ["un chien brun court dans l'herbe verte", "deux enfants jouent sur une planche à roulettes dans une cour",
          "un homme escalade un rocher au bord de la mer", "un chat noir dort sur le canapé",
          "un garçon saute dans une piscine", "une fille avec un chapeau tient un ballon",
          "un cycliste roule sur une route de montagne", "le chien court après la balle"]
ENGLISH = ["a brown dog runs on the green grass", "two children play on a skateboard in a courtyard",
           "a man climbs a rock by the sea", "a black cat sleeps on the sofa", "a boy jumps into a swimming pool",
           "a girl with a hat holds a ball", "a cyclist rides on a mountain road", "the dog runs after the ball"]


@pytest.fixture()
def tower(lite, monkeypatch):
    """The session's `lite` with its text tower's warn-once flags put back afterwards."""
    monkeypatch.setattr(lite.text_tower, "_warned_unknown", False, raising=False)
    monkeypatch.setattr(lite.text_tower, "_warned_cut", False, raising=False)
    return lite


def test_a_utf16_texts_or_labels_file_is_named_as_such(tmp_path):
    """PowerShell 5's `>` writes UTF-16: with a BOM the error said "line 1 is not UTF-8 (byte 0xff)"; without one
    (ASCII) every line read as letters between NULs and a lone "\\x00" line was ranked as a text."""
    for name, data in [("bom.txt", "a dog\na cat\n".encode("utf-16")),
                       ("nobom.txt", "a dog\na cat\n".encode("utf-16-le"))]:
        path = tmp_path / name
        path.write_bytes(data)
        for what in ("texts", "labels"):
            with pytest.raises(PolymodalError, match=rf"cannot read {what} file .*{name}: it is UTF-16 \(or binary\), "
                                                     r"not UTF-8 text; save it as UTF-8 \(in PowerShell"):
                read_text_lines(path, what)


def test_lines_of_invisible_characters_are_blank_lines(tmp_path):
    """A line of a zero-width space (or a control character) alone was kept: --texts ranked it as the empty text,
    --labels-from refused the file with "label 1 is empty ... an empty line leaves" though none was."""
    path = tmp_path / "labels.txt"
    path.write_bytes("dog\r\n\u200b\r\ncat\r\n\x0c\r\n".encode())
    assert read_text_lines(path, "labels") == (["dog", "cat"], [1, 3])


def test_labels_flag_drops_an_invisible_label_as_it_drops_an_empty_one(tmp_path):
    args = cli.build_parser().parse_args(["classify", "x.jpg", "--labels", "dog,\u200b,cat,"])
    assert cli._labels(args) == ["dog", "cat"]


def test_a_long_vqa_question_is_warned_of_once(easy_vqa, monkeypatch, caplog):
    """The question's own warning ("its end was cut off") came with the text tower's ("a text reached the text
    tower's limit of 32 tokens"), in the CLI and in /v1/vqa's warnings."""
    from PIL import Image

    monkeypatch.setattr(easy_vqa.text_tower, "_warned_cut", False, raising=False)
    question = "is there a small red circle or a big blue square in the top left corner of this image " * 3 + "?"
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        easy_vqa.answer(Image.new("RGB", (64, 64), (200, 30, 30)), question)
    assert "its end was cut off" in caplog.text and "reached the text tower's limit" not in caplog.text


def test_texts_of_fragments_are_warned_of_once(tower, caplog):
    """Russian (or Arabic, Greek) has no [UNK] in MiniLM's vocabulary: each word reads letter by letter, and the
    tower embedded it with no word said."""
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        tower.encode_text(ENGLISH + ["xylophone"])  # one rare word alone is no text of fragments
        assert "fragments" not in caplog.text and "vocabulary" not in caplog.text
        tower.encode_text(["a dog", RUSSIAN])
        tower.encode_text([RUSSIAN])
    assert caplog.text.count("mostly words the text tower splits into fragments") == 1
    assert f"'{RUSSIAN}': 0 of its 6 words are in its vocabulary; it reads 'к ##о ##р" in caplog.text


def test_many_texts_in_another_language_are_warned_of(tower, caplog):
    """French has whole words the vocabulary knows ("un", "chat", "court"), so no one text is mostly fragments; eight
    together hold 56% whole words, English captions 87% or more."""
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        tower.encode_text(FRENCH[:7])  # too few to tell
        assert "vocabulary" not in caplog.text
        tower.encode_text(FRENCH)
    assert "words of these 8 texts are in the text tower's vocabulary" in caplog.text
    assert 'reads "un chi ##en br ##un' in caplog.text


def test_a_served_query_of_fragments_gets_a_note(lite, db):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    with TestClient(create_app(lite, db)) as client:
        r = client.post("/v1/search", json={"text": RUSSIAN, "k": 1})
        assert r.status_code == 200 and "6 of the query's 6 words are not in the model's vocabulary" in \
            r.json()["warnings"][0]
        r = client.post("/v1/embed", json={"texts": ["a dog", RUSSIAN]})
        assert [w[:9] for w in r.json()["warnings"]] == ["texts[1]:"]
        assert client.post("/v1/search", json={"text": "a dog on a beach", "k": 1}).json()["warnings"] == []


def test_search_texts_file_in_russian_warns_from_the_cli(tower, monkeypatch, tmp_path, capsys, caplog):
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: tower)
    texts = tmp_path / "ru.txt"
    texts.write_text(f"{RUSSIAN}\na dog\n")
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        code = cli.main(["search", "a dog", "--texts", str(texts), "--model", "lite", "-k", "1"])
    assert code == 0 and "splits into fragments" in caplog.text
