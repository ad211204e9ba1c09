"""Stop 51: what stop 50's web page review left.
- a proxy's or gateway's own error page (HTML, not polymodal's JSON) showed only "HTTP 504": nothing said that
  polymodal never answered;
- the remove × was 22.9 x 18.8 px, under WCAG 2.2's 24 x 24 px target;
- a right-to-left file name was not isolated from the score beside it."""

from test_s49_webpage import server  # noqa: F401 - a fixture: a served lite index
from test_s50_a11y import _open, _search_by_keyboard
from test_web_page import _page, browser_tools  # noqa: F401 - browser_tools is a fixture


def search_answered_by(browser_tools, server, tmp_path, status, content_type, body) -> str:  # noqa: F811
    """The page's status line after a search that gets this reply instead of the server's."""
    with _page(browser_tools, tmp_path) as page:
        _open(page, server)
        page.route("**/v1/search", lambda route: route.fulfill(status=status, content_type=content_type, body=body))
        page.keyboard.type("a cup of coffee")
        page.keyboard.press("Enter")
        page.wait_for_function("$('status').classList.contains('error')", timeout=20_000)
        assert page.errors == []
        return page.evaluate("$('status').textContent")


def test_a_proxy_error_page_is_named_as_not_the_servers_reply(browser_tools, server, tmp_path):  # noqa: F811
    status = search_answered_by(browser_tools, server, tmp_path, 504, "text/html",
                                "<html><body><h1>504 Gateway Time-out</h1></body></html>")
    assert "HTTP 504" in status and "not from the server itself" in status, status


def test_the_remove_button_is_a_24_px_target_and_names_are_isolated(browser_tools, server, tmp_path):  # noqa: F811
    with _page(browser_tools, tmp_path) as page:
        _open(page, server)
        _search_by_keyboard(page)
        box = page.locator("#results .hit .remove").first.bounding_box()
        assert box["width"] >= 24 and box["height"] >= 24, box
        assert page.evaluate("getComputedStyle(document.querySelector('#results .hit .name')).unicodeBidi") == "isolate"
        assert page.errors == []
