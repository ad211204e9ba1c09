"""Stop 55's change reviewed whole (helper diffreview): the --explain legend crashed after the map was computed where
Pillow has no font for its text (its bitmap font, the last resort on Pillow 10.0 or a build without FreeType, takes
Latin-1 only; a Pillow without FreeType raised ImportError from the font lookup itself); an ONNX VQA export's
predict()/predict_choices() still gave every row NaN-scored, with the vocabulary's first answer, where the PyTorch
models' now raise one error (README: "in Python, answer(), predict() and predict_choices()"); and under torchrun
every process printed the weights-gone-NaN error, the same line once per process."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageFont
from PIL._util import DeferredError

from polymodal.apps import heat_scale
from polymodal.errors import PolymodalError
from test_choices_audit import onnx_fake  # noqa: E402 (tests/ is on the path)
from test_s43_dist import _run_ranks  # noqa: E402

GREEK, CHINESE = "Q: τι χρώμα είναι;", 'Query: "狗"'


@pytest.fixture
def no_fonts(monkeypatch):
    """A machine without DejaVu or Arial (a slim container)."""
    monkeypatch.setattr(heat_scale, "_FONTS", ())


def test_bitmap_font_of_pillow_10_0_draws_any_caption(no_fonts, monkeypatch):
    bitmap = ImageFont.load_default_imagefont

    def pillow_10_0(*size):  # load_default() took no size before Pillow 10.1 and gave the bitmap font
        if size:
            raise TypeError("load_default() takes 0 positional arguments but 1 was given")
        return bitmap()

    monkeypatch.setattr(ImageFont, "load_default", pillow_10_0)
    for caption in (GREEK, CHINESE, "Q: café?"):
        picture = heat_scale.with_legend(Image.new("RGB", (256, 256)), caption)
        assert picture.size[0] == 256 and picture.size[1] > 256


def test_pillow_without_freetype_draws_the_legend_with_its_bitmap_font(no_fonts, monkeypatch):
    monkeypatch.setattr(heat_scale, "_FONTS", ("DejaVuSans.ttf",))  # there, but FreeType cannot read it
    monkeypatch.setattr(ImageFont, "core", DeferredError(ImportError("The _imagingft C module is not installed")))
    picture = heat_scale.with_legend(Image.new("RGB", (256, 256)), GREEK)
    assert picture.size[1] > 256


def test_a_freetype_font_is_given_the_caption_as_written():
    font = heat_scale._font(12)
    assert isinstance(font, ImageFont.FreeTypeFont) and heat_scale._drawable(GREEK, font) == GREEK


def test_onnx_export_predict_raises_when_every_row_is_nan():
    nan, fine = np.full(3, np.nan, np.float32), np.array([2.0, 0.5, -1.0], np.float32)
    m = onnx_fake({"a": nan, "b": nan, "c": fine})
    with pytest.raises(PolymodalError, match="model 'fake-onnx' scores the answers to all 2 questions as NaN"):
        m.predict(["a", "b"], ["q?", "q?"])
    with pytest.raises(PolymodalError, match="all 2 questions as NaN"):
        m.predict_choices(["a", "b"], ["q?", "q?"], [["yes", "no"], ["no", "red"]])
    # a row scored NaN among finite ones keeps its NaN score, as the PyTorch model's (eval vqa leaves it out)
    (_, first), (answer, score) = m.predict(["a", "c"], ["q?", "q?"])
    assert math.isnan(first) and answer == "yes" and score > 0.5


# every rank's AdamW step leaves the weights NaN (the loss it stepped on was finite): the same weights on every rank
NAN_SCRIPT = '''
import sys

import torch

from polymodal import cli

step = torch.optim.AdamW.step


def diverging(self, *args, **kwargs):
    loss = step(self, *args, **kwargs)
    with torch.no_grad():
        for param in (p for group in self.param_groups for p in group["params"]):
            param.fill_(float("nan"))
    return loss


torch.optim.AdamW.step = diverging
folder = sys.argv[1]
sys.exit(cli.main(["train", "contrastive", "--pairs", f"{folder}/pairs.jsonl", "--out", f"{folder}/run",
                   "--epochs", "1", "--batch-size", "2", "--embed-dim", "8", "--val-fraction", "0", "--quiet"]))
'''


def test_weights_gone_nan_under_torchrun_are_said_once(tmp_path, monkeypatch):
    from test_s55_scaleout import _pairs

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    _pairs(tmp_path)
    script = tmp_path / "nan.py"
    script.write_text(NAN_SCRIPT)
    ranks = _run_ranks(script, tmp_path)
    said = [[line for line in err.splitlines() if line.startswith("polymodal:")] for _, _, err in ranks]
    assert [rc for rc, _, _ in ranks] == [2, 2], ranks
    assert len(said[0]) == 1 and "the weights became NaN or inf in epoch 1" in said[0][0], said
    assert said[1] == [] and "Traceback" not in ranks[1][2], ranks  # rank 0 says it, once
