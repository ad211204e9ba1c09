"""Stop 49's review of the web page as a person uses it (headless Chromium, as test_web_page.py)."""

import base64

import pytest

from test_web_page import _serving, _tab, browser_tools  # noqa: F401 - browser_tools is a fixture
from test_s44_web import INFO_LOADED


@pytest.fixture(scope="module")
def server(browser_tools, lite, db):
    from polymodal.serve import create_app

    with _serving(create_app(lite, db)) as url:
        yield url


def _open(page, url):
    page.goto(url + "/", wait_until="domcontentloaded")
    page.wait_for_function(INFO_LOADED, timeout=20_000)
    page.evaluate("$('vqa').hidden = false; $('caption').hidden = false")  # the panels a VQA / caption server shows


def test_the_page_fits_a_phone_screen(browser, server, tmp_path):
    """At 375 px the Search button sat half beyond the screen's edge and the Ask and Caption buttons outside their
    panels: the page scrolled sideways. The forms now wrap."""
    with _tab(browser) as page:
        page.set_viewport_size({"width": 375, "height": 740})
        _open(page, server)
        page.fill("#q", "a cup of coffee")
        page.click("#search-btn")  # (not _search: it waits for every thumbnail, and those below the screen load lazily)
        page.wait_for_selector("#results .hit", timeout=20_000)
        width, scroll, outside = page.evaluate("""() => {
            const w = document.documentElement.clientWidth;
            const out = [...document.querySelectorAll('main button, main input:not([hidden]), main select')]
              .filter((e) => e.getBoundingClientRect().right > w).map((e) => e.id || e.textContent);
            return [w, document.documentElement.scrollWidth, out]; }""")
        assert (scroll, outside) == (width, [])
        assert page.errors == []


def test_a_pasted_image_searches_and_a_dropped_link_says_why_nothing_happened(browser, server, gallery, tmp_path):
    """Ctrl+V of a copied picture did nothing; dragging a result's thumbnail (a link, no file) onto the drop zone
    did nothing either, without a word."""
    b64 = base64.b64encode((gallery / "coffee.jpg").read_bytes()).decode()
    with _tab(browser) as page:
        _open(page, server)
        page.evaluate("""(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "pasted.jpg", { type: "image/jpeg" }));
            document.body.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true })); }""", b64)
        page.wait_for_function("$('status').textContent.includes('results for pasted.jpg')", timeout=20_000)
        assert page.locator("#results .hit").first.get_attribute("data-name") == "coffee.jpg"
        link = page.evaluate_handle("""() => { const data = new DataTransfer();
            data.setData("text/uri-list", location.origin + "/v1/thumb/1"); return data; }""")
        page.dispatch_event("#drop", "drop", {"dataTransfer": link})
        assert page.get_attribute("#status", "class") == "error"
        assert page.inner_text("#status").startswith("that drop held no image file")
        assert page.errors == []


def test_question_and_caption_errors_look_like_errors(browser, server, gallery, tmp_path):
    """An error in the question or caption panel was shown in the answer's bold text: "the request took longer
    than 30 s ..." read like the caption. It is now red, as the search and Add panels' errors are."""
    with _tab(browser) as page:
        _open(page, server)
        page.click("#vqa-form button")  # no image chosen
        assert page.inner_text("#vqa-answer") == "choose an image first"
        assert page.get_attribute("#vqa-answer", "class") == "error"
        page.set_input_files("#caption-file", str(gallery / "cat.jpg"))
        page.click("#caption-form button")  # this server has no captioner: its error
        page.wait_for_function("$('caption-text').className === 'error'", timeout=20_000)
        assert "caption" in page.inner_text("#caption-text")
        assert page.errors == []
