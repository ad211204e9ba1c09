"""Stop 54, the captioning journey: empty and cut captions are said (once per model), and `caption --page` writes
a page of the photos with their captions."""

import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.cli import main
from polymodal.models.beam_search import caption_batches
from polymodal.models.captioner import Captioner, CaptionerConfig


class _Model:
    pass


def _caption(owner, written, max_tokens=4):
    photos = [np.zeros((8, 8, 3), np.uint8)] * len(written)
    return caption_batches(photos, 16, 1, max_tokens, 3, lambda batch, *_: written[: len(batch)], str, owner=owner)


def test_empty_and_cut_captions_are_said_once_per_model(caplog):
    owner = _Model()
    with caplog.at_level(logging.WARNING):
        # [5, 6, 7]: ended at the last step; [5, 6, 7, 1012]: "... .", whole but for its end: neither is cut
        _caption(owner, [[], [5, 6, 7, 8], [5, 6, 7], [5, 6], [5, 6, 7, 1012]])
    assert "1 of 5 captions are empty" in caplog.text
    assert "1 of 5 captions reached max_tokens (4 word pieces) before their end" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _caption(owner, [[], [5, 6, 7, 8]])  # the same model again (a server, a long run): said once
        _caption(_Model(), [[5, 6]])  # finished captions: nothing to say
    assert caplog.text == ""


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A captioner saved before any training: its captions never end (random word pieces up to --max-tokens)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("s54cap") / "untrained"
    Captioner(CaptionerConfig()).save(folder)
    return folder


def test_caption_cli_says_why_a_caption_is_cut_and_writes_a_page(untrained, tmp_path, capsys, caplog):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    page = tmp_path / "captions.html"
    with caplog.at_level(logging.WARNING):
        assert main(["caption", str(tmp_path / "red.png"), str(tmp_path / "broken.jpg"), "--model", str(untrained),
                     "--max-tokens", "3", "--page", str(page)]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 captions reached max_tokens (3 word pieces)" in caplog.text
    html = page.read_text()
    caption = out.split("\t", 1)[1].strip()
    assert caption and caption in html and "polymodal caption: " in html
    assert "1 captioned photos, in the order given; 1 unreadable (last)" in html
    assert html.count("data:image/jpeg;base64") == 1 and "broken.jpg" in html  # the photo inlined, the bad one named
    assert html.index("red.png") < html.index("broken.jpg")


def test_caption_page_in_a_missing_folder_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import polymodal.cli_caption as cli_caption

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    monkeypatch.setattr(cli_caption, "load_captioner_model", lambda *a: pytest.fail("loaded the model"))
    assert main(["caption", str(tmp_path / "a.png"), "--page", str(tmp_path / "no" / "p.html")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"--page .*p\.html: the folder .* does not exist", err) and "Traceback" not in err
