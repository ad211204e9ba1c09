"""A text longer than the text tower's token limit is cut, as in every CLIP-style library; it is said once."""

import logging


def test_minilm_warns_once_of_a_text_past_its_token_limit(lite, caplog) -> None:
    encoder = lite.text_tower
    encoder._warned_cut = False  # the session's model may have warned in another test
    with caplog.at_level(logging.WARNING):
        encoder.tokenize(["a short one"])
        assert "limit" not in caplog.text
        batch = encoder.tokenize(["word " * 400, "short"])
        encoder.tokenize(["word " * 400])
    assert batch["attention_mask"].shape[1] == 256
    assert caplog.text.count("a text reached the text tower's limit of 256 tokens") == 1
