"""Review s41 of captioning at inference time and its evaluation: each test fails before its fix."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import test_captioner
from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.eval.captions import caption_scores, evaluate_captions
from polymodal.models import beam_search as search
from polymodal.models.beam_search import CLS, PAD, SEP, beam_search
from test_caption_audit import _LoopingSession, _table_step

fresh = test_captioner.fresh  # the untrained captioner fixture, shared rather than rebuilt

# "5 [SEP]" finishes second of a beam of 2 at step 2 (-1.74 over 2 pieces: -0.87 each) behind "6 7" (-0.90); at step 3
# "6 7 8" and "6 7 9" (-1.62 each) push it out; they end as "6 7 8 [SEP]" (-4.61 over 4: -1.15 each). Greedy writes "5".
EVICTED = {CLS: {5: 0.5, 6: 0.45}, 5: {SEP: 0.35}, 6: {7: 0.9}, 7: {8: 0.49, 9: 0.49}, 8: {SEP: 0.05}, 9: {SEP: 0.05}}


def test_a_finished_caption_pushed_out_of_the_beam_is_still_returned_when_it_is_the_most_likely():
    assert beam_search(_table_step([EVICTED]), 1, 1, 10) == [[5]]  # greedy
    assert beam_search(_table_step([EVICTED]), 1, 2, 10) == [[5]]  # not the less likely "6 7 8"
    # per image: the other photo's beams do not take the kept caption's place
    other = {CLS: {9: 0.8}, 9: {4: 0.8}, 4: {SEP: 0.8}}
    assert beam_search(_table_step([other, EVICTED]), 2, 2, 10) == [[9, 4], [5]]
    # with length_penalty 0 (the total) the search's own ranking already keeps it: nothing changes
    assert beam_search(_table_step([EVICTED]), 1, 2, 10, length_penalty=0.0) == [[5]]


# ---------------------------------------------------------------------------------------------- decoded text
WRITTEN = "a man's t-shirt doesn't fit at 10:30 o'clock on a 3.5 m wall"


def test_the_captioner_writes_hyphenated_words_clitics_and_decimals_whole(fresh):
    ids, _ = fresh.tokenize([WRITTEN])
    pieces = [t for t in ids[0].tolist() if t not in (PAD, CLS, SEP)]
    assert fresh.decode(pieces) == WRITTEN  # not "a man ' s t - shirt doesn ' t fit at 10 : 30 o ' clock on a 3. 5 m wall"
    # what is scored: the caption the references hold, written by the captioner, scores as itself
    refs = [[WRITTEN], ["a cat on a mat"]]
    assert caption_scores(refs, [fresh.decode(pieces), "a cat on a mat"])["bleu4"] == pytest.approx(1.0)
    # a possessive plural, a list of numbers and a sentence's full stop stay as written
    assert search.caption_text("the dogs ' toys, 1, 2 and 3. a dog") == "the dogs ' toys, 1, 2 and 3. a dog"


def test_the_onnx_runtime_writes_the_same_whole_words():
    from polymodal.export.caption_runtime import OnnxCaptioner

    runtime = object.__new__(OnnxCaptioner)  # the graphs replaced by test_caption_audit's stand-ins
    runtime.prefix, runtime.step = _LoopingSession("prefix"), _LoopingSession("step")
    runtime.files = {"prefix": "prefix.onnx", "step": "step.onnx"}
    runtime.transform = lambda images: np.stack([np.full((3, 2, 2), 1.0) for _ in images])
    runtime.tokenizer = type("Pieces", (), {"decode": staticmethod(lambda pieces: "a man ' s t - shirt")})
    assert runtime.caption([np.zeros((8, 8, 3), np.uint8)] * 2, max_tokens=2) == ["a man's t-shirt"] * 2


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("option, match", [({"beam": 0}, "beam must be"), ({"max_tokens": 0}, "max_tokens must be"),
                                           ({"length_penalty": float("nan")}, "length_penalty must be"),
                                           ({"length_penalty": "1"}, "length_penalty must be"),
                                           ({"no_repeat": 1}, "no_repeat must be")])
def test_generate_refuses_options_it_cannot_honour_in_one_clear_error(fresh, option, match):
    grid = torch.zeros(1, 49, 1280)
    with pytest.raises(PolymodalError, match=match):  # was an IndexError (beam 0), "" (max_tokens 0), ignored (nan)
        fresh.generate(grid, **option)
    with pytest.raises(PolymodalError, match=match):
        beam_search(_table_step([EVICTED]), 1, **{"beam": 2, "max_tokens": 10, **option})


# ---------------------------------------------------------------------------------------------- eval without scorers
@pytest.fixture
def no_pycocoevalcap(monkeypatch):
    for name in ("pycocoevalcap", "pycocoevalcap.bleu", "pycocoevalcap.bleu.bleu", "pycocoevalcap.cider",
                 "pycocoevalcap.cider.cider"):
        monkeypatch.setitem(sys.modules, name, None)  # as on an install without the `captions` extra


def _pairs(tmp_path):
    rows = []
    for n in range(2):
        Image.new("RGB", (32, 32), (40 * n, 0, 0)).save(tmp_path / f"{n}.png")
        rows.append(json.dumps({"image": str(tmp_path / f"{n}.png"), "caption": f"photo {n}"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.jsonl"


def test_without_pycocoevalcap_evaluation_stops_before_captioning_any_photo(tmp_path, no_pycocoevalcap, monkeypatch,
                                                                          capsys):
    captioned = []

    class Model:
        def caption(self, images, **kw):
            captioned.extend(images)
            return ["a photo"] * len(images)

    with pytest.raises(PolymodalError, match="pycocoevalcap"):
        evaluate_captions(Model(), _pairs(tmp_path), progress=False)
    assert captioned == []  # not every photo captioned first, then the error
    import polymodal.cli_caption as cli_caption

    monkeypatch.setattr(cli_caption, "load_captioner_model", lambda *a: pytest.fail("the model loaded"))
    assert main(["eval", "captions", "--pairs", str(_pairs(tmp_path))]) != 0
    assert "pip install 'polymodal[captions]'" in capsys.readouterr().err
