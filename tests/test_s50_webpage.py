"""Stop 50: the web page after a failed search (headless Chromium, as test_web_page.py)."""

import pytest

from test_web_page import _page, _serving, browser_tools  # noqa: F401 - browser_tools is a fixture
from test_s44_web import INFO_LOADED


@pytest.fixture(scope="module")
def server(browser_tools, lite, db):
    from polymodal.serve import create_app

    with _serving(create_app(lite, db)) as url:
        yield url


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
