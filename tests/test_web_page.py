"""The web page end to end in headless Chromium (Playwright): type a query, submit, see coffee.jpg first.

Outside CI a missing Chromium or Playwright skips with the reason; under CI=true (where .ci/install-browser has
installed Debian's chromium and `make test` the test extra) the test must run.
"""

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest


CHROMIUM = os.environ.get("POLYMODAL_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]


def _need(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser test: {reason}")
    pytest.skip(reason)


def playwright_or_skip():
    """Playwright's sync_playwright; skipped (failed under CI) without Playwright, the serve extra or Chromium."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _need(False, f"{exc.name} is not installed (pip install 'polymodal[serve,test]')")
    _need(Path(CHROMIUM).is_file() or bool(shutil.which(CHROMIUM)),
          f"{CHROMIUM} not found (apt-get install chromium, or run .ci/install-browser)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser_tools():
    return playwright_or_skip()


@contextlib.contextmanager
def _serving(app):
    """uvicorn on a free loopback port, in a thread of this process (reusing the loaded model)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(browser_tools, lite, db):
    from polymodal.serve import create_app

    with _serving(create_app(lite, db)) as url:
        yield url


VIEWPORT = {"width": 1100, "height": 800}


def _watched(page):
    """The page, with the script errors it raises collected in page.errors."""
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    return page


@contextlib.contextmanager
def _page(browser_tools, tmp_path):
    """A page in a Chromium of its own (Playwright's driver and Chromium start and stop with it: 1.5-3 s)."""
    with browser_tools() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS, viewport=VIEWPORT,
        )
        try:
            yield _watched(context.new_page())
        finally:
            context.close()


@contextlib.contextmanager
def one_chromium():
    """One Chromium for a module's page tests (conftest's `browser`); `_tab` gives each test a context of its own (no
    cookies, storage or cache of another test's, as a fresh profile). While it is open Playwright's event loop counts
    as running in this thread, so asyncio.run() fails: a module takes it only where no test after its first page test
    runs asyncio."""
    with playwright_or_skip()() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def _tab(browser):
    """A page in a fresh context of the module's `browser`."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield _watched(context.new_page())
    finally:
        context.close()


def _search(page, text: str):
    page.fill("#q", text)
    page.click("#search-btn")
    page.wait_for_selector("#results .hit", timeout=20_000)
    page.wait_for_function(
        "[...document.querySelectorAll('#results .hit img')].every((i) => i.complete && i.naturalWidth > 0)",
        timeout=20_000,
    )
    return page.locator("#results .hit").first


def test_search_page_finds_the_coffee(browser, server, tmp_path):
    with _tab(browser) as page:
        page.goto(server + "/", wait_until="domcontentloaded")
        page.wait_for_function("document.getElementById('meta').textContent.includes('images')", timeout=20_000)
        assert page.is_hidden("#vqa")  # lite has no VQA head: no question box
        assert page.is_hidden("#caption")  # nor a captioner beside it
        first = _search(page, "a cup of coffee")
        assert first.get_attribute("data-name") == "coffee.jpg"
        assert float(first.locator(".score").inner_text()) > 0
        shot = tmp_path / "search.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert page.errors == []


def test_page_asks_for_the_api_key(browser, lite, db, tmp_path):
    from polymodal.serve import create_app

    with _serving(create_app(lite, db, api_key="s3cret")) as url, _tab(browser) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#keybox", state="visible", timeout=20_000)  # /v1/info said 401
        page.fill("#key", "s3cret")
        page.click("#key-form button")
        page.wait_for_function("document.getElementById('meta').textContent.includes('images')", timeout=20_000)
        first = _search(page, "a rocket on the launch pad")  # thumbnails come as blobs fetched with the key
        assert first.get_attribute("data-name") == "rocket.jpg"
        assert first.locator("img").get_attribute("src").startswith("blob:")
        assert page.errors == []


def test_page_over_a_qdrant_collection(browser, lite, db, tmp_path):
    """`serve --qdrant`: thumbnails by point id (a UUID), and no upload box (the collection is filled by pushes)."""
    pytest.importorskip("qdrant_client")
    from polymodal.index import ImageIndex
    from polymodal.index.qdrant import QdrantCollection
    from polymodal.serve import create_app

    collection = QdrantCollection(str(tmp_path / "q"), "photos")
    collection.push(ImageIndex(db), progress=False)
    with _serving(create_app(lite, collection)) as url, _tab(browser) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function("document.getElementById('meta').textContent.includes('images')", timeout=20_000)
        assert page.is_hidden("#add")
        assert "in Qdrant collection photos at" in page.inner_text("#meta")
        first = _search(page, "a cup of coffee")
        assert first.get_attribute("data-name") == "coffee.jpg"
        assert len(first.get_attribute("data-id")) == 36  # a UUID
        page.screenshot(path=str(tmp_path / "qdrant.png"), full_page=True)
        assert page.errors == []


def test_adding_a_photo_the_index_holds_says_it_was_skipped(browser, lite, db, gallery, tmp_path):
    """Stop 38: the server adds no second row for bytes it holds; the page says why nothing was added."""
    from polymodal.serve import create_app

    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    with _serving(create_app(lite, copy)) as url, _tab(browser) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function("document.getElementById('meta').textContent.includes('images')", timeout=20_000)
        page.set_input_files("#add-files", str(gallery / "cat.jpg"))
        page.click("#add-form button")
        page.wait_for_function("document.getElementById('add-status').textContent.startsWith('added')",
                               timeout=20_000)
        text = page.inner_text("#add-status")
        assert text.startswith("added 0 images (1 skipped: the same image is already in the index (id "), text
        assert page.errors == []


def test_a_damaged_upload_is_reported_in_the_add_panel(browser, lite, db, gallery, tmp_path):
    """Stop 39's review: the error of an upload with a truncated photo showed under the search box at the top of the
    page, not in the Add panel the user was looking at; nothing is added (the request is all or nothing)."""
    from polymodal.serve import create_app

    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    half = tmp_path / "half.jpg"
    half.write_bytes((gallery / "rocket.jpg").read_bytes()[:3000])
    with _serving(create_app(lite, copy)) as url, _tab(browser) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function("document.getElementById('meta').textContent.includes('images')", timeout=20_000)
        before = page.inner_text("#meta")
        page.set_input_files("#add-files", [str(gallery / "cat.jpg"), str(half)])
        page.click("#add-form button")
        page.wait_for_function("document.getElementById('add-status').className === 'error'", timeout=20_000)
        assert "half.jpg is a damaged or truncated image" in page.inner_text("#add-status")
        assert page.inner_text("#status") == "" and page.inner_text("#meta") == before
        assert page.errors == []
