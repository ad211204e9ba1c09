"""Stop 44's review of `polymodal serve`'s web page as a user meets it (headless Chromium, as test_web_page.py)."""

import json
import shutil
import subprocess

import pytest

from test_web_page import _page, _serving, browser_tools  # noqa: F401 - browser_tools is a fixture

INFO_LOADED = "document.getElementById('meta').textContent.includes('images')"


def test_image_search_by_file_works_twice_and_from_the_keyboard(browser_tools, lite, db, gallery, tmp_path):
    """Searching by a photo, then by text, then by the same photo again did nothing: a file input fires no change
    event for the file it already holds. And "choose a file" was a label for a hidden input: no Tab reached it, so
    image search could not be started without a mouse."""
    from polymodal.serve import create_app

    with _serving(create_app(lite, db)) as url, _page(browser_tools, tmp_path) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function(INFO_LOADED, timeout=20_000)
        cat = str(gallery / "cat.jpg")
        for _ in range(2):
            page.set_input_files("#file", cat)
            page.wait_for_function("document.getElementById('status').textContent.endsWith(' results for cat.jpg')",
                                   timeout=20_000)
            page.fill("#q", "a rocket")
            page.press("#q", "Enter")
            page.wait_for_function("document.getElementById('status').textContent.includes('rocket')",
                                   timeout=20_000)
        # the picker itself is the browser's: count the clicks that would open it, and keep it shut
        page.evaluate("window.picks = 0; document.getElementById('file').addEventListener('click', "
                      "(ev) => { window.picks++; ev.preventDefault(); })")
        page.focus("#search-btn")
        page.keyboard.press("Tab")  # the next stop after Search is the drop box's "choose a file"
        page.keyboard.press("Enter")
        page.wait_for_function("window.picks === 1", timeout=5_000)
        assert page.errors == []


def test_a_server_that_cannot_be_reached_is_named_as_such(browser_tools, lite, db, tmp_path):
    """A stopped server (or a dropped network) showed the browser's bare "Failed to fetch" under the search box."""
    from polymodal.serve import create_app

    with _serving(create_app(lite, db)) as url, _page(browser_tools, tmp_path) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function(INFO_LOADED, timeout=20_000)
        page.route("**/v1/search", lambda route: route.abort())  # as the browser sees a server that is gone
        page.fill("#q", "a cat")
        page.press("#q", "Enter")
        page.wait_for_function("document.getElementById('status').className === 'error'", timeout=20_000)
        assert "cannot reach the server" in page.inner_text("#status"), page.inner_text("#status")


def test_the_add_panel_names_each_skipped_upload():
    """Re-adding photos the index holds said "(2 skipped: the same image is already in the index (id 2))": the first
    file's reason, its id and all, as if it were every file's. Run under node (as test_s27_audit's showAnswer)."""
    from polymodal.serve.page import render_page

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed")
    page = render_page()
    assert 'skippedNote(res.skipped)' in page  # what the Add panel shows
    start = page.index("function skippedNote(")
    script = page[start:page.index('$("add-form")', start)] + "console.log(JSON.stringify(CASES.map(skippedNote)));"
    dup = "the same image is already in the index (id {})"
    cases = [[], [{"upload": "a.jpg", "reason": dup.format(2)}],
             [{"upload": "a.jpg", "reason": dup.format(2)}, {"upload": "b.jpg", "reason": dup.format(3)}]]
    out = subprocess.run([node, "-e", script.replace("CASES", json.dumps(cases))], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        "", f" (1 skipped: {dup.format(2)})",
        f" (2 skipped: a.jpg: {dup.format(2)}; b.jpg: {dup.format(3)})",
    ]
