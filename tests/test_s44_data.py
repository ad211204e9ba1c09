"""Stop 44, data review: a CSV caption quoted over several lines (valid CSV) is read, not dropped as an "unclosed
quote" counted once per line; pretraining says when captions are longer than the fusion encoder reads. Fast: tiny
models, the sample gallery."""

from __future__ import annotations

import logging

import pytest


def _csv_pairs(gallery, name: str, text: str):
    """_read_csv of `text` written to a folder of its own beside links to the gallery's photos (the session's
    gallery stays as other tests count it)."""
    import tempfile
    from pathlib import Path

    from polymodal.data.pairs import _read_csv

    with tempfile.TemporaryDirectory() as tmp:
        for photo in gallery.glob("*.jpg"):
            (Path(tmp) / photo.name).symlink_to(photo)
        path = Path(tmp) / name
        path.write_text(text, newline="")
        return _read_csv(path)


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_a_caption_quoted_over_lines_is_read_as_one_caption(gallery, end):
    # what Excel (Alt+Enter in a cell) and pandas' to_csv write for a caption holding a line break
    text = end.join(["image,caption", 'cat.jpg,"a cat' + end + 'on a mat"', "moon.jpg,the moon", ""])
    pairs, skipped = _csv_pairs(gallery, "s44-multiline.csv", text)
    assert [p.caption for p in pairs] == ["a cat on a mat", "the moon"]
    assert skipped == []  # was: the cat's row skipped as "an unclosed quote?", counted as 2 skipped rows


def test_an_unclosed_quote_is_still_reported(gallery):
    text = 'image,caption\ncat.jpg,a cat\nmoon.jpg,"a moon\nclock.jpg,a clock\ncoffee.jpg,a coffee\n'
    pairs, skipped = _csv_pairs(gallery, "s44-unclosed.csv", text)
    assert [p.caption for p in pairs] == ["a cat"]
    assert [where.rsplit(":", 1)[1] for where, _ in skipped] == ["3-5", "4", "5"]
    assert "unclosed" in skipped[0][1]


@pytest.fixture(scope="module")
def enc():
    import torch

    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    torch.manual_seed(0)
    return FusionEncoder(FusionEncoderConfig(fusion="co_attention", dim=16, dropout=0.0, mlm_head=True,
                                             answers=["yes", "no"])).eval()


def test_pretraining_says_when_captions_are_cut(enc, caplog):
    from polymodal.train.pretrain import tokenize_captions

    long = "a photo of a cat " + " ".join(["sitting on a red mat beside a window in the sun"] * 5)
    enc._warned_cut = False
    with caplog.at_level(logging.WARNING):
        ids = tokenize_captions(enc, [long, "a dog", long + " again"])
        tokenize_captions(enc, [long])  # once per model: MLM tokenizes the same captions again
    assert max(len(r) for r in ids) == enc.config.max_question_tokens
    warnings = [r.getMessage() for r in caplog.records if "was cut there" in r.getMessage()]
    assert len(warnings) == 1
    assert (f"a text reached the fusion encoder's limit of {enc.config.max_question_tokens} "
            "tokens and was cut there (2 in this batch)") in warnings[0]


def test_short_captions_are_not_warned_of(enc, caplog):
    from polymodal.train.pretrain import tokenize_captions

    enc._warned_cut = False
    with caplog.at_level(logging.WARNING):
        tokenize_captions(enc, ["a dog", "a cat on a mat"])
    assert "was cut there" not in caplog.text


@pytest.mark.parametrize("head", ["\n", "\r\n\r\n", "\ufeff\n"])
def test_blank_lines_above_the_csv_header_are_passed_over(gallery, head):
    # was: "... is empty; write a header line" for a file with a header and rows under a blank first line
    text = head + "image,caption\ncat.jpg,a cat\nnope.jpg,a ghost\n"
    pairs, skipped = _csv_pairs(gallery, "s44-blank-head.csv", text)
    assert [p.caption for p in pairs] == ["a cat"]
    lines = head.count("\n")
    assert [where.rsplit(":", 1)[1] for where, _ in skipped] == [str(lines + 3)]  # its line in the file


def test_a_tab_separated_csv_under_a_blank_line_finds_its_tabs(gallery):
    pairs, _ = _csv_pairs(gallery, "s44-blank-tabs.csv", "\nimage\tcaption\ncat.jpg\ta cat, sitting\n")
    assert [p.caption for p in pairs] == ["a cat, sitting"]


def test_a_csv_of_blank_lines_is_still_called_empty(gallery):
    from polymodal.errors import PolymodalError

    with pytest.raises(PolymodalError, match="is empty"):
        _csv_pairs(gallery, "s44-blank.csv", "\n\n\n")
