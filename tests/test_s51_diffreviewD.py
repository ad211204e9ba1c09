"""Stop 51 (helper diffreviewD): classify's early header check (d696f50) answered a URL with "image not found:
https:/example.com/..." (Path() eats a slash) where the model's loader had said it is a URL and polymodal works
offline; caption's skip lines said the same. The URL refusal now lives where both read a path."""

import polymodal
from polymodal import cli
from polymodal.data.images import check_image_file
from polymodal.errors import PolymodalError

import pytest

URL = "https://example.com/cat.jpg"


def test_classify_says_a_url_is_a_url_before_loading_a_model(monkeypatch, capsys):
    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("model loaded")))
    assert cli.main(["classify", URL, "--labels", "cat,dog"]) == 2
    err = capsys.readouterr().err
    assert f"{URL} is a URL" in err and "download the file first" in err and "not found" not in err


def test_the_header_check_refuses_a_url_as_load_image_does():
    with pytest.raises(PolymodalError, match="is a URL.*offline"):
        check_image_file("s3://bucket/photo.jpg")
