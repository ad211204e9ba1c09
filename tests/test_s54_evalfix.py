"""Stop 54, evaluation figures a researcher would report:

- One photo the model embeds as NaN (a model of one's own, a diverged fine-tune, an fp16 overflow) made every figure
  of `eval images` 0.0 and every text->image figure of `eval retrieval` 0.0 (the NaN is in every similarity to it);
  now such a photo is left out with one warning naming it, counted as "not_finite" in the JSON line and given an
  error item in --out (--strict refuses). A caption or class the model embeds as NaN is one error (it made every
  image->text query, or every zero-shot photo, rank last).
- VQA answers written with typographic apostrophes or quotes ("don’t", “yes”) compare as the ASCII ones.
- `eval vqa` and `eval captions` printed full-precision floats (0.7333333333333333) where the other eval commands
  print 4 decimals.
Fast: a colour-reading fake model (white photos and texts naming "broken" embed as NaN)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image

import polymodal
from polymodal import cli, registry
from polymodal.data.images import ImageTransform
from polymodal.models.base import EmbeddingModel

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
WHITE = (255, 255, 255)


class NaNForWhite(EmbeddingModel):
    """3-d space: an image is its mean colour, a text the colours it names; a white photo, and a text naming
    "broken", embed as NaN."""

    name, version, dim = "nanfake", "1", 3
    transform = ImageTransform(resize=8, crop=8)
    logit_scale = 10.0

    def _image_batch(self, pixels):
        mean = pixels.float().mean(dim=(2, 3))
        white = (pixels.float().amin(dim=(1, 2, 3)) > 0.9)[:, None]  # every channel at its brightest (1.0)
        return torch.where(white, torch.full_like(mean, float("nan")), mean + 3.0)

    def _text_batch(self, texts):
        rows = [[float("nan")] * 3 if "broken" in t else [1.0 if c in t else 0.01 for c in COLOURS] for t in texts]
        return torch.tensor(rows)


@pytest.fixture()
def nanfake(monkeypatch):
    model = NaNForWhite()
    monkeypatch.setattr(polymodal, "load", lambda name="lite", **kw: model)
    monkeypatch.setitem(registry.MODELS, "nanfake", lambda **kw: model)
    return model


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _photos(folder, white: bool) -> list:
    """Class folders of 3 shades per colour (a white photo in "red" too, if ``white``) -> their labelled rows."""
    rows = []
    for label, rgb in COLOURS.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            shade = tuple(max(0, v - 25 * i) for v in rgb)
            Image.new("RGB", (12, 10), shade).save(folder / label / f"{i}.png")
            rows.append({"image": f"{label}/{i}.png", "label": label})
    if white:
        Image.new("RGB", (12, 10), WHITE).save(folder / "red" / "white.png")
        rows.append({"image": "red/white.png", "label": "red"})
    return rows


@pytest.mark.parametrize("command", ["images", "zeroshot"])
def test_a_nan_photo_is_left_out_and_counted_not_zeroing_the_figures(capsys, nanfake, tmp_path, caplog, command):
    figures = {}
    for white in (False, True):
        root = tmp_path / f"set-{white}"
        _photos(root, white)
        out_file = tmp_path / f"items-{white}.jsonl"
        with caplog.at_level(logging.WARNING):
            code, out, err = _run(capsys, "eval", command, "--labels-file", root, "--model", "nanfake",
                                  "--out", out_file, "--quiet")
        assert code == 0, err
        figures[white] = json.loads(out)
    clean, poisoned = figures[False], figures[True]
    keys = ["R@1", "R@5", "R_precision", "MAP@R"] if command == "images" else ["top1", "balanced_top1"]
    assert clean[keys[0]] > 0.5
    # the figures of the other photos, not 0.0; the photo counted apart from unreadable ones
    assert [poisoned[k] for k in keys] == [clean[k] for k in keys]
    assert (poisoned["not_finite"], poisoned["unreadable"], clean["not_finite"]) == (1, 0, 0)
    assert "left out 1 image the model embeds as NaN or inf (first: " in caplog.text and "white.png" in caplog.text
    items = [json.loads(x) for x in (tmp_path / "items-True.jsonl").read_text().splitlines()]
    assert [i["error"] for i in items if i["image"].endswith("white.png")] == [
        "the model embeds it as NaN or inf (no similarity to it can be ranked)"]


def _pairs(tmp_path, colours, caption=lambda c: f"a {c} square") -> str:
    rows = []
    for c in colours:
        path = tmp_path / f"{c}.png"
        Image.new("RGB", (12, 10), WHITE if c == "white" else COLOURS[c]).save(path)
        rows.append({"image": path.name, "caption": caption(c)})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_retrieval_leaves_a_nan_photo_out(capsys, nanfake, tmp_path):
    code, out, err = _run(capsys, "eval", "retrieval", "--pairs", _pairs(tmp_path, ["red", "green", "blue", "white"]),
                          "--model", "nanfake", "--quiet")
    line = json.loads(out)
    assert code == 0 and (line["images"], line["captions"], line["not_finite"], line["unreadable"]) == (3, 3, 1, 0)
    assert line["t2i_R@1"] == 1.0 and line["i2t_R@1"] == 1.0  # were 0.0 and 1.0


def test_a_caption_or_class_embedded_as_nan_is_one_error(capsys, nanfake, tmp_path):
    pairs = _pairs(tmp_path, ["red", "green", "blue"], lambda c: "a broken square" if c == "green" else f"a {c} square")
    code, out, err = _run(capsys, "eval", "retrieval", "--pairs", pairs, "--model", "nanfake", "--quiet")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "the model embeds 1 caption as NaN or inf (first: 'a broken square')" in err  # i2t was 0.0
    root = tmp_path / "set"
    _photos(root, white=False)
    (root / "broken").mkdir()
    Image.new("RGB", (12, 10), (9, 9, 9)).save(root / "broken" / "0.png")
    code, out, err = _run(capsys, "eval", "zeroshot", "--labels-file", root, "--model", "nanfake", "--quiet")
    assert code == 2 and "the model embeds 1 class as NaN or inf (first: 'broken')" in err  # top1 was 0.0


def test_strict_refuses_a_nan_photo_and_all_nan_is_an_error(capsys, nanfake, tmp_path):
    root = tmp_path / "set"
    _photos(root, white=True)
    code, out, err = _run(capsys, "eval", "images", "--labels-file", root, "--model", "nanfake", "--strict", "--quiet")
    assert code == 2 and "--strict: 1 NaN-embedded image" in err
    from polymodal.errors import PolymodalError
    from polymodal.eval.retrieval import encode_readable

    with pytest.raises(PolymodalError, match="the model embeds all 2 readable images as NaN or inf"):
        encode_readable(NaNForWhite(), [Image.new("RGB", (9, 9), WHITE)] * 2)


@pytest.mark.parametrize("given, same", [("don\u2019t", "don't"), ("dont", "Don\u2019t."), ("it\u2019s", "it's"),
                                         ("\u201cyes\u201d", "yes"), ("o\u2019clock", "o'clock"),
                                         ("it\u02bcs", "it's")])
def test_typographic_apostrophes_and_quotes_compare_as_ascii(given, same):
    from polymodal.data.answers import comparable_answer

    assert comparable_answer(given) == comparable_answer(same)
    assert comparable_answer("it\u2019s") != comparable_answer("its")  # still apart, as "it's" and "its"


@pytest.mark.parametrize("curly, straight", [("don\u2019t", "don't"), ("it\u2019s", "it's"), ("o\u2019clock", "o'clock")])
def test_soft_accuracy_reads_typographic_apostrophes_on_either_side(curly, straight):
    from polymodal.data.answers import soft_vqa_score
    from polymodal.eval.vqa import accuracy_by_type, as_rows

    assert soft_vqa_score(curly, [straight] * 3 + ["no"]) == 0.75  # annotators disagree (was 0.0)
    assert soft_vqa_score(straight, [curly] * 10) == 1.0  # annotators agree: compared as written, less the typography
    assert soft_vqa_score(curly, [straight]) == 1.0  # one answer: exact match
    rows = as_rows([{"image": "x.jpg", "question": "q?", "answer": straight}])
    assert accuracy_by_type([curly], rows)["accuracy"] == 1.0


class _FixedVQA:
    answers = ["yes", "no"]

    def answer(self, image, question):  # a VQA model for require_vqa
        raise AssertionError

    def predict(self, images, questions):
        return [("yes" if "yes" in q else "no", 2 / 3) for q in questions]


def test_eval_vqa_and_captions_figures_have_four_decimals(tmp_path):
    from polymodal.eval.vqa import vqa_accuracy

    rows = [{"image": "a.png", "question": f"yes {i}?", "answer": "yes" if i % 3 else "no"} for i in range(6)]
    rows.append({"image": "a.png", "question": "yes 9?", "answer": "yes", "answers": ["yes", "no", "no", "no"]})
    items: list = []
    m = vqa_accuracy(_FixedVQA(), rows, cache=False, details=items)
    assert m["accuracy"] == round((4 + 0.25) / 7, 4) == 0.6071 and m["per_type"] == {"yes/no": 0.6071}
    assert {i["confidence"] for i in items} == {0.6667} and items[-1]["score"] == 0.25
    from polymodal.data.pairs import Pair, PairSet
    from polymodal.eval.captions import evaluate_captions

    class Says:
        def caption(self, images, **kw):
            return ["a red square on a wall"] * len(images)

    pairs = []
    for name, caption in (("a", "a red square on a white wall"), ("b", "two blue circles on a wall"),
                          ("c", "a red circle in the grass")):
        Image.new("RGB", (12, 10), (200, 0, 0)).save(tmp_path / f"{name}.png")
        pairs.append(Pair(str(tmp_path / f"{name}.png"), caption))
    out = evaluate_captions(Says(), PairSet.from_pairs(pairs), progress=False)
    figures = [out[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider")]
    assert all(isinstance(v, float) for v in figures) and figures == [round(v, 4) for v in figures]
    assert any(v != round(v, 2) for v in figures)  # (not figures that happen to be short)
