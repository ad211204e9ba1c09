"""The text towers' "cut at the limit" warning counts texts that were cut, not texts that exactly fit."""

import logging

from polymodal.encoders.text import SentenceEncoder, minilm_path

SIX_WORDS = "one two three four five six"  # + [CLS] and [SEP]: 8 word pieces


def _warnings(caplog, texts):
    tower = SentenceEncoder(minilm_path(), max_length=8)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="polymodal.encoders.text"):
        tower.tokenize(texts)
    return [r.getMessage() for r in caplog.records if "limit of 8 tokens" in r.getMessage()]


def test_a_text_that_exactly_fits_is_not_called_cut(caplog):
    assert _warnings(caplog, [SIX_WORDS, "a dog"]) == []


def test_texts_past_the_limit_are_counted(caplog):
    said = _warnings(caplog, [SIX_WORDS, SIX_WORDS + " seven", SIX_WORDS + " seven eight"])
    assert len(said) == 1 and "(2 in this batch)" in said[0]


def test_the_transformers_path_counts_the_same(caplog, monkeypatch):
    tower = SentenceEncoder(minilm_path(), max_length=8)
    monkeypatch.setattr(tower, "_fast", None)  # the path a folder without tokenizer.json takes
    with caplog.at_level(logging.WARNING, logger="polymodal.encoders.text"):
        tower.tokenize([SIX_WORDS, SIX_WORDS + " seven"])
    said = [r.getMessage() for r in caplog.records if "limit of 8 tokens" in r.getMessage()]
    assert len(said) == 1 and "(1 in this batch)" in said[0]
