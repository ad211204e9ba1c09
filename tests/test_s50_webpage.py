"""Stop 50: the web page after a failed search (headless Chromium, as test_web_page.py), and /v1/embed's notes."""

import pytest

from test_s49_webpage import server  # noqa: F401 - a fixture: a served lite index
from test_web_page import _page, browser_tools  # noqa: F401 - browser_tools is a fixture
from test_s44_web import INFO_LOADED


def test_a_failed_search_clears_the_last_results(browser_tools, server, tmp_path):
    """The photos of the search before stayed under a failed search's error and read as its results."""
    with _page(browser_tools, tmp_path) as page:
        page.goto(server + "/", wait_until="domcontentloaded")
        page.wait_for_function(INFO_LOADED, timeout=20_000)
        page.fill("#q", "a cup of coffee")
        page.click("#search-btn")
        page.wait_for_selector("#results .hit", timeout=20_000)
        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"}])
        page.wait_for_function("$('status').className === 'error'", timeout=20_000)
        assert page.locator("#results .hit").count() == 0
        assert "searching" not in page.inner_text("#status")
        assert page.errors == []


def test_embed_says_which_texts_the_model_mostly_cannot_read(lite, db):
    """/v1/search said so in `warnings` (stop 49); /v1/embed, the endpoint a client builds its own search on, only
    logged it on the server, which a client never sees."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    with TestClient(create_app(lite, db)) as client:
        r = client.post("/v1/embed", json={"texts": ["a dog on a beach"] + ["😀😀"] * 8})
        assert r.status_code == 200 and len(r.json()["vectors"]) == 9
        warnings = r.json()["warnings"]
        assert warnings[0].startswith("texts[1]: ") and "[UNK]" in warnings[0]
        assert len(warnings) == 6 and warnings[-1] == "and 3 more texts mostly in unknown word pieces"
        assert client.post("/v1/embed", json={"texts": ["a dog on a beach"]}).json()["warnings"] == []
