"""Stop 45: the web page asks the server only for what it serves (headless Chromium, as test_web_page.py)."""

import time

from test_web_page import _page, _serving, browser_tools  # noqa: F401 - browser_tools is a fixture
from test_s44_web import INFO_LOADED


def test_a_page_load_asks_for_nothing_the_server_answers_404(browser_tools, lite, db, tmp_path):
    """Every page load asked for /favicon.ico, which the server does not have: a 404 line in its log each time.
    The browser fetches the icon itself (no page event shows it): the server's side records what it was asked."""
    from polymodal.serve import create_app

    app = create_app(lite, db)
    answers = []

    @app.middleware("http")
    async def record(request, call_next):
        response = await call_next(request)
        answers.append((request.url.path, response.status_code))
        return response

    with _serving(app) as url, _page(browser_tools, tmp_path) as page:
        page.goto(url + "/", wait_until="load")
        page.wait_for_function(INFO_LOADED, timeout=20_000)
        page.wait_for_load_state("networkidle")
        time.sleep(1)  # the icon is asked for after the page has loaded
    assert ("/v1/info", 200) in answers, answers  # the page's own calls were seen
    assert [(p, s) for p, s in answers if s >= 400] == []
