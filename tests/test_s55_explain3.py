"""Stop 55, explain3: the PNG `--explain` saved was the photo under a heat map and nothing else, so a reader could
not tell what red meant nor what the map explained (which question and answer, which query and match); and
help(save_heatmap) showed its required transform= as ``<object object at 0x7f...>``."""

import inspect
import pydoc

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import cli_json
from polymodal.apps.explain import save_heatmap
from polymodal.apps.heat_scale import MAX_LINES, MIN_WIDTH, _font, heat_colors, wrapped


@pytest.fixture
def drawn(monkeypatch):
    """The texts drawn on any picture while the test runs."""
    texts, draw = [], ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **kw: texts.append(text)
                        or draw(self, xy, text, *a, **kw))
    return texts


def _scale_row(picture: np.ndarray, below: int) -> int:
    """The first row under ``below`` that is the colour scale (blue at its left, red at its right), or -1."""
    blue, red = heat_colors(np.array([0.0, 1.0]))
    for y in range(below, picture.shape[0]):
        row = picture[y].astype(int)
        inked = np.where(np.abs(row - 255).sum(-1) > 30)[0]
        if len(inked) > 20 and np.abs(row[inked[0]] - blue).max() < 20 and np.abs(row[inked[-1]] - red).max() < 20:
            return y
    return -1


def test_help_names_what_transform_takes():
    assert "transform=<required: model.transform, or None>" in str(inspect.signature(save_heatmap))
    assert "object at 0x" not in pydoc.render_doc(save_heatmap)


def test_vqa_explain_png_shows_the_scale_the_question_and_the_answer(easy_vqa, tmp_path, capsys, monkeypatch,
                                                                     drawn):
    import polymodal.cli_vqa as cli_vqa
    from polymodal import cli

    photo = tmp_path / "shape.png"
    Image.new("RGB", (64, 64), "gray").save(photo)
    monkeypatch.setattr(cli_vqa, "_load_vqa_model", lambda *a: easy_vqa)
    out = tmp_path / "heat.png"
    assert cli.main(["vqa", str(photo), "what shape is in the image?", "--explain", str(out)]) == 0
    answer = capsys.readouterr().out.split()[0]
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[1] == 256 and picture.shape[0] > 256  # the 4-times map, a strip below it
    assert _scale_row(picture, 256) > 256
    text = " ".join(drawn)
    assert "Q: what shape is in the image?" in text and f"A: {answer} (score" in text and "easy-vqa" in text
    assert "least relevant" in drawn and "most relevant" in drawn


def test_search_explain_png_names_the_query_and_the_match(db, tmp_path, drawn):
    out = tmp_path / "why.png"
    hits = cli_json(["search", "a cup of coffee", "--db", str(db), "-k", "2", "--explain", str(out), "--json"])
    lines = " ".join(drawn)  # a line wraps at a space (where the path starts depends on the tmp folder's length)
    assert 'Query: "a cup of coffee"' in drawn and "Match: rank 1, " in lines and "(score " in lines
    assert hits[0]["path"] in "".join(drawn)  # (a path longer than a line is broken anywhere)
    width, height = Image.open(hits[0]["path"]).size
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[1] == width and _scale_row(picture, height) > height


def test_python_caption_and_legend_false(tmp_path, drawn):
    photo = Image.new("RGB", (400, 300), "gray")
    heat = np.eye(7, dtype=np.float32)
    bare = Image.open(save_heatmap(photo, heat, tmp_path / "bare.png", transform=None, legend=False))
    scale = Image.open(save_heatmap(photo, heat, tmp_path / "scale.png", transform=None))
    told = Image.open(save_heatmap(photo, heat, tmp_path / "told.png", transform=None, caption="one\ntwo"))
    assert bare.size == (400, 300) and scale.width == told.width == 400 and 300 < scale.height < told.height
    assert np.array_equal(np.asarray(told)[:300], np.asarray(bare))  # the map itself unchanged above the strip
    assert {"one", "two"} <= set(drawn)


def test_a_narrow_map_sits_centred_over_a_strip_wide_enough_for_its_labels(tmp_path):
    out = Image.open(save_heatmap(Image.new("RGB", (20, 500), "gray"), np.eye(7), tmp_path / "h.png",
                                  transform=None))  # drawn 4 times: 80x2000
    picture = np.asarray(out.convert("RGB"))
    assert out.width == MIN_WIDTH and _scale_row(picture, 2000) > 2000
    left = (MIN_WIDTH - 80) // 2
    assert (picture[:2000, :left] == 255).all() and (picture[:2000, left + 80:] == 255).all()


def test_the_strip_keeps_within_the_formats_limit(tmp_path):
    wide = np.full((8, 16483, 3), 120, np.uint8)
    assert max(Image.open(save_heatmap(wide, np.eye(7), tmp_path / "h.webp", transform=None)).size) <= 16383


def test_a_long_caption_is_wrapped_and_cut():
    font = _font(12)
    lines = wrapped("what " * 200 + "\n/" + "a" * 300, font, 200)
    assert len(lines) == MAX_LINES and lines[-1].endswith("...")
    assert all(font.getlength(line) <= 200 for line in lines)
    path = wrapped("/" + "a" * 60, font, 200)  # no spaces: broken anywhere, nothing lost
    assert "".join(path) == "/" + "a" * 60 and 1 < len(path) <= MAX_LINES
