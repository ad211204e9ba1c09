"""Stop 54, eval --page at a glance: which of a retrieval row's hits is its photo was told by a frame's colour
only (one olive to a red-green colour-blind reader, one black in a high-contrast theme, nothing to a screen reader);
each frame stood 6 px out of its 128-px figure, so neighbouring hits' frames touched; a gone photo's grey box had no
frame; a caption's CIDEr-D was greyed like "not scored"; and the page named no language."""

import re
from pathlib import Path

import pytest
from PIL import Image

from polymodal.eval.page import write_page
from test_web_page import CHROMIUM, LAUNCH_ARGS, _need


@pytest.fixture()
def photos(tmp_path) -> list[str]:
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for name, colour in (("a", (200, 0, 0)), ("b", (0, 200, 0)), ("c", (0, 0, 200))):
        Image.new("RGB", (60, 40), colour).save(folder / f"{name}.png")
        paths.append(str(folder / f"{name}.png"))
    return paths


def _retrieval_page(tmp_path, photos) -> Path:
    a, b, c = photos
    gone = str(tmp_path / "photos" / "gone.png")  # moved while the evaluation ran: its thumbnail is a grey box
    items = [{"query": "text", "caption": "a red square", "image": a, "rank": 2, "top": [b, a, c]},
             {"query": "text", "caption": "a lost photo", "image": gone, "rank": 3, "top": [b, c, gone]}]
    write_page(tmp_path / "r.html", "retrieval", {"model": "m"}, items)
    return tmp_path / "r.html"


def test_the_hit_that_is_its_photo_says_so_in_words(tmp_path, photos):
    text = _retrieval_page(tmp_path, photos).read_text(encoding="utf-8")
    lost, red = text.split("<section")[1:]  # worst first
    notes = re.findall(r"<br>([^<]*)</figcaption>", red)
    assert notes == ["its photo", "hit 1", "hit 2: its photo", "hit 3"]  # was "hit 2": its frame's colour only
    assert re.findall(r"<br>([^<]*)</figcaption>", lost) == ["its photo", "hit 1", "hit 2", "hit 3: its photo"]
    assert text.startswith("<!doctype html><html lang='en'>")  # a screen reader reads it in the page's language


def test_a_captions_score_is_not_greyed_as_not_scored(tmp_path, photos):
    items = [{"image": photos[0], "caption": "a red square", "references": ["a red box"], "cider": 0.0},
             {"image": photos[1], "caption": "a green square", "references": ["a green square"], "cider": 2.5},
             {"image": str(tmp_path / "broken.png"), "error": "not a readable image"}]
    write_page(tmp_path / "c.html", "captions", {"model": "m"}, items)
    text = (tmp_path / "c.html").read_text(encoding="utf-8")
    states = re.findall(r"<section class='item ?(\w*)'><div class='verdict'>([^<]*)</div>", text)
    assert states == [("measured", "CIDEr-D 0.00"), ("measured", "CIDEr-D 2.50"), ("unscored", "not scored")]


def test_frames_fit_their_thumbnails_and_truth_and_misses_differ_without_colour(tmp_path, photos):
    """In Chromium (as tests/test_web_page.py starts it), offline."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _need(False, f"{exc.name} is not installed (pip install 'polymodal[test]')")
    _need(Path(CHROMIUM).is_file(), f"{CHROMIUM} not found (apt-get install chromium, or run .ci/install-browser)")
    page_file = _retrieval_page(tmp_path, photos)
    write_page(tmp_path / "c.html", "captions", {"model": "m"},
               [{"image": photos[0], "caption": "x", "references": ["y"], "cider": 0.5},
                {"image": str(tmp_path / "broken.png"), "error": "not a readable image"}])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                       else route.abort())
            page.goto(page_file.as_uri())
            places = page.evaluate("""() => [...document.querySelectorAll('figure')].map(f => {
                const box = f.firstElementChild, s = getComputedStyle(box);
                return {mark: f.className, kind: box.className.split(' ')[0], style: s.borderTopStyle,
                        colour: s.borderTopColor, width: box.getBoundingClientRect().width,
                        figure: f.getBoundingClientRect().width, right: box.getBoundingClientRect().right,
                        left: box.getBoundingClientRect().left}})""")
            assert len(places) == 8 and all(p["width"] == p["figure"] == 128 for p in places), places  # was 134
            hits = places[1:4]
            assert all(n["left"] - h["right"] >= 6 for h, n in zip(hits, hits[1:])), hits  # they touched
            truth = {p["style"] for p in places if p["mark"] == "truth"}
            wrong = {p["style"] for p in places if p["mark"] == "wrong"}
            assert truth == {"solid"} and wrong == {"dashed"}  # a shape, not only a colour: both were solid
            gone = [p for p in places if p["kind"] == "none"]
            assert len(gone) == 2 and all(p["mark"] == "truth" and p["colour"] == "rgb(34, 170, 119)" for p in gone)
            page.goto((tmp_path / "c.html").as_uri())
            colours = page.evaluate("[...document.querySelectorAll('.verdict')].map(v => getComputedStyle(v).color)")
            assert colours[0] != colours[1] and colours[1] == "rgb(119, 119, 119)", colours  # score, not scored
        finally:
            browser.close()
