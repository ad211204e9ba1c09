"""Stop 42's review of the quick start (`make demo`) and the web page's search results."""

import io
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from polymodal import demo
from polymodal.data.samples import write_sample_gallery
from test_web_page import _page, _serving, browser_tools  # noqa: F401 - browser_tools is a fixture


def test_a_gallery_photo_cut_short_by_a_kill_is_written_again(tmp_path, monkeypatch):
    """A run killed while it saved a photo left half a JPEG, which every later run kept (it only writes missing
    photos) and then failed on: `polymodal: error: not a readable image: demo-out/gallery/...` for good."""
    real_save = Image.Image.save

    def killed_mid_write(self, fp, format=None, **params):
        buf = io.BytesIO()
        real_save(self, buf, format or "JPEG", **params)
        half = buf.getvalue()[:2000]
        if isinstance(fp, (str, os.PathLike)):
            Path(fp).write_bytes(half)
        else:
            fp.write(half)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        write_sample_gallery(tmp_path)
    monkeypatch.undo()
    for path in write_sample_gallery(tmp_path):  # the re-run
        with Image.open(path) as img:
            img.load()  # raises for a truncated JPEG
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


class _Captioner:
    def caption(self, images):
        return ["a photo of something"] * len(images)


def _run_demo(out, capsys) -> str:
    assert demo.main(["--out", str(out)]) == 0
    return capsys.readouterr().out


def test_demo_folder_moved_then_run_again(tmp_path, lite, monkeypatch, capsys):
    """The index keeps absolute paths: after `mv demo-out elsewhere` (or moving the checkout that holds it) the
    re-run showed every photo twice (old and new path) and ended in a ValueError traceback writing results.html."""
    import polymodal

    monkeypatch.setattr(polymodal, "load", lambda name: _Captioner() if name == "captioner" else lite)
    monkeypatch.setattr(demo, "TEXT_QUERIES", ["a cat"])
    _run_demo(tmp_path / "first", capsys)
    shutil.move(tmp_path / "first", tmp_path / "moved")
    out = _run_demo(tmp_path / "moved", capsys)
    assert "removed 15," in out  # the rows of the old location
    names = re.findall(r"^  \d +[\d.]+ +(\S+\.jpg)$", out.split("query: 'a cat'")[1].split("5. Image")[0], re.M)
    assert names[0] == "cat.jpg" and len(set(names)) == len(names) == 3, out
    page = (tmp_path / "moved" / "results.html").read_text()
    assert all(src.startswith("gallery/") for src in re.findall(r"src='([^']*)'", page))


def test_demo_out_that_is_a_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    assert demo.main(["--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polymodal: error: ") and "taken" in err and "Traceback" not in err


# a search for rockets answers 1.5 s late (a cold server, a large k, a slow link), after the search that followed it
SLOW_ROCKETS = """const fetchNow = window.fetch; window.fetch = (url, opts) => {
  const slow = opts && typeof opts.body === "string" && opts.body.includes("rocket");
  return slow ? new Promise((done) => setTimeout(done, 1500)).then(() => fetchNow(url, opts)) : fetchNow(url, opts);
};"""


def test_page_shows_the_last_search_not_the_last_answer(browser_tools, lite, db, tmp_path):
    """Searching again before the first search answered: the first one's answer, arriving last, replaced the grid
    under the query box that now held the second query."""
    from polymodal.serve import create_app

    with _serving(create_app(lite, db)) as url, _page(browser_tools, tmp_path) as page:
        page.add_init_script(SLOW_ROCKETS)
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function("document.getElementById('meta').textContent.includes('images')", timeout=20_000)
        page.fill("#q", "a rocket on the launch pad")
        page.click("#search-btn")
        page.fill("#q", "a cup of coffee")
        page.click("#search-btn")
        page.wait_for_function("document.getElementById('status').textContent.includes('coffee')", timeout=20_000)
        time.sleep(2.5)  # past the rocket search's answer
        assert "a cup of coffee" in page.inner_text("#status")
        assert page.locator("#results .hit").first.get_attribute("data-name") == "coffee.jpg"
        assert page.errors == []


def test_demo_run_again_with_another_model_says_how(tmp_path, lite, capsys):
    """The demo's index is built with one model; `--model default` on the same --out said "or a new --db", an option
    the demo does not have."""
    from polymodal.index import ImageIndex

    ImageIndex(tmp_path / "index").update(write_sample_gallery(tmp_path / "gallery")[0].parent, lite, progress=False)
    assert demo.main(["--out", str(tmp_path), "--model", "default"]) == 2
    err = capsys.readouterr().err
    assert "--db" not in err and "pass another --out to try --model default" in err, err
