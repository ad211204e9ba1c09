"""Stop 57, the suite's time (helper trainserve): the torchrun tests share one launch and a module's page tests one
Chromium. What the sharing relies on: each page test's context starts empty, and the one launch ran every module's
scenario on both ranks."""

import json

from test_distributed import LAUNCHED, WORLD
from test_web_page import _tab

ORIGIN = "http://s57.test"


def _served(page):
    """The page at ORIGIN (answered by Playwright, no server): an origin of its own for storage and cookies."""
    page.route(ORIGIN + "/**", lambda route: route.fulfill(body="<!doctype html><title>s57</title>",
                                                           content_type="text/html"))
    page.goto(ORIGIN + "/")
    return page


def test_page_tests_in_one_browser_see_no_storage_or_cookie_of_the_test_before(browser):
    with _tab(browser) as first:
        _served(first).evaluate("localStorage.setItem('key', 's3cret'); document.cookie = 'seen=1; max-age=600'")
        assert first.evaluate("[localStorage.getItem('key'), document.cookie]") == ["s3cret", "seen=1"]
        assert first.context.browser is browser and first.viewport_size == {"width": 1100, "height": 800}
    with _tab(browser) as second:
        assert _served(second).evaluate("[localStorage.getItem('key'), document.cookie]") == [None, ""]
        assert second.context.browser is browser and len(browser.contexts) == 1  # the first one was closed
        assert second.errors == []


def test_one_launch_ran_every_modules_torchrun_scenario_on_each_rank(launched):
    assert list(launched) == list(LAUNCHED)
    root = {folder.parent for folder in launched.values()}
    assert len(root) == 1 and (root.pop() / "done").exists()
    wrote = {"test_distributed": "rank{}.pt", "test_s41_dist": "rank{}.pt", "test_s42_dist_cache": "split-rank{}.npz",
             "test_s48_dist_grads": "rank{}.pt", "test_s55_scaleout": "rank{}.json"}
    for name, pattern in wrote.items():
        assert all((launched[name] / pattern.format(r)).is_file() for r in range(WORLD)), name
    # each scenario cached its features in its own folder, not the session's
    assert (launched["test_s42_dist_cache"] / "cache" / "features").is_dir()
    assert json.loads((launched["test_s55_scaleout"] / "rank0.json").read_text())["same"]
