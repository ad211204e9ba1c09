"""Image->text and text->text retrieval over a text file (`polymodal search --texts FILE`), its embedding cache and
its mistakes, with the real `lite` model over the sample gallery."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from polymodal import cli
from polymodal.apps.text_search import read_text_lines, search_texts, text_embeddings
from polymodal.errors import PolymodalError

CAPTIONS = ["a cup of coffee on a saucer", "a rocket on the launch pad", "a close-up of a cat",
            "a red motorcycle in a garage", "galaxies in deep space"]


@pytest.fixture
def caption_file(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("\ufeff# what the shop sells\n\n" + "\n".join(CAPTIONS) + "\n", encoding="utf-8")
    return path


def test_each_photo_finds_its_own_caption(lite, gallery):
    photos = ["coffee", "rocket", "cat"]  # (lite takes the motorcycle and the galaxies for a rocket or a cat)
    hits = search_texts(lite, lite.encode_image([gallery / f"{p}.jpg" for p in photos]), CAPTIONS, k=2)
    assert [h[0].text for h in hits] == CAPTIONS[:3]
    assert all(len(h) == 2 and h[0].score > h[1].score for h in hits)
    text_hits = search_texts(lite, lite.encode_text(["a kitten"]), CAPTIONS, k=10)[0]
    assert text_hits[0].text == "a close-up of a cat" and len(text_hits) == len(CAPTIONS)  # k clamped


def test_the_texts_are_embedded_once(lite, monkeypatch):
    calls = []
    real = type(lite).encode_text
    monkeypatch.setattr(type(lite), "encode_text", lambda self, texts, **kw: calls.append(len(texts)) or real(self, texts, **kw))
    texts = CAPTIONS + ["a texts list no other test uses"]
    first = text_embeddings(lite, texts)
    second = text_embeddings(lite, texts)
    assert calls == [len(texts)] and np.array_equal(first, second)
    np.testing.assert_allclose(first, real(lite, texts), atol=2e-3)  # cached as float16
    text_embeddings(lite, texts[1:])  # another list: embedded afresh
    assert calls == [len(texts), len(texts) - 1]


def test_read_text_lines_skips_comments_and_blank_lines_and_keeps_line_numbers(caption_file, tmp_path):
    texts, lines = read_text_lines(caption_file)
    assert texts == CAPTIONS and lines == [3, 4, 5, 6, 7]  # the BOM is not part of the comment line
    for content, message in (("# only a comment\n", "holds no texts"), (b"\xff\xfe\x00bad", "cannot read texts file")):
        bad = tmp_path / "bad.txt"
        bad.write_bytes(content.encode() if isinstance(content, str) else content)
        with pytest.raises(PolymodalError, match=message):
            read_text_lines(bad)
    with pytest.raises(PolymodalError, match="is a folder"):
        read_text_lines(tmp_path)
    with pytest.raises(PolymodalError, match="texts file not found"):
        read_text_lines(tmp_path / "missing.txt")


def test_cli_image_to_text_with_a_heat_map(caption_file, gallery, tmp_path, capsys):
    out = tmp_path / "why.png"
    assert cli.main(["search", "--texts", str(caption_file), "--image", str(gallery / "rocket.jpg"), "--model", "lite",
                     "-k", "2", "--explain", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["text"] == "a rocket on the launch pad" and rows[0]["line"] == 4 and rows[0]["explain"] == str(out)
    assert Image.open(out).size[0] > 100
    assert cli.main(["search", "a kitten", "--texts", str(caption_file), "--model", "lite", "-k", "1"]) == 0
    table = capsys.readouterr().out
    assert "a close-up of a cat" in table and "line" in table.splitlines()[0]


@pytest.mark.parametrize("extra, message", [
    (["--db", "x"], "pass one of --db DB"),
    (["--explain", "a.png"], "pass --image"),
    (["--collection", "c"], "pass --qdrant URL with it"),
])
def test_cli_mistakes(caption_file, extra, message, capsys):
    assert cli.main(["search", "a cat", "--texts", str(caption_file), *extra]) == 2
    assert message in capsys.readouterr().err
