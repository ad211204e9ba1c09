"""Stop 52: a thumbnail is checked on the file the server opened, not on its path before the open. Someone who can
write in an indexed folder swapped a checked photo (or its folder) for a link out between the check and the open, and
the link's target was served and cached; a photo replaced by a named pipe held a worker thread for good; the log line
for a refused link said "outside the indexed folders" also of a git-annex photo whose target is its repository's
.git/annex. Seconds on a CPU, with a fake model."""

import io
import logging
import os
import threading

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import create_app  # noqa: E402
from polymodal.serve.service import Service  # noqa: E402
from test_index import FakeModel, paint  # noqa: E402

PRIVATE = (250, 200, 0)
RED = (254, 0, 0)


@pytest.fixture
def photos(tmp_path):
    """photos/red.png and photos/sub/red.png indexed; private/passport.png and private/red.png not -> (folder, model,
    {relative path: id})."""
    w = tmp_path.resolve()
    paint(w / "photos" / "red.png", "red")
    paint(w / "photos" / "sub" / "red.png", "red")
    (w / "private").mkdir()
    Image.new("RGB", (64, 64), PRIVATE).save(w / "private" / "passport.png")
    Image.new("RGB", (64, 64), PRIVATE).save(w / "private" / "red.png")  # the name a swapped folder must hold
    model = FakeModel()
    ImageIndex(w / "db").update_folders([w / "photos"], model, progress=False)
    svc_ids = {}
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c:
        for hit in c.post("/v1/search", json={"text": "red", "k": 5}).json()["hits"]:
            svc_ids[os.path.relpath(hit["path"], w)] = hit["id"]
    return w, model, svc_ids


def _pixel(response):
    return Image.open(io.BytesIO(response.content)).convert("RGB").getpixel((4, 4))


def _private(response) -> bool:
    return response.status_code == 200 and all(abs(a - b) <= 3 for a, b in zip(_pixel(response), PRIVATE))


def _swap_after_the_check(monkeypatch, swap):
    """Service.check_servable as before, then `swap(path)` once: the moment a racing local user would pick."""
    check, done = Service.check_servable, []

    def check_then_swap(self, image_id, path, *args):
        check(self, image_id, path, *args)
        if not done:
            done.append(swap(path))

    monkeypatch.setattr(Service, "check_servable", check_then_swap)


def test_a_photo_swapped_for_a_link_out_after_the_check_is_not_served(photos, monkeypatch):
    w, model, ids = photos

    def to_link(path):
        os.remove(path)
        os.symlink(w / "private" / "passport.png", path)

    _swap_after_the_check(monkeypatch, to_link)
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c:
        r = c.get(f"/v1/thumb/{ids['photos/red.png']}")
        assert not _private(r) and r.status_code == 200 and _pixel(r) == RED  # was the passport's pixels
        assert c.get(f"/v1/thumb/{ids['photos/red.png']}").status_code == 403  # the link, now, as before


def test_a_folder_swapped_for_a_link_out_after_the_check_is_not_served(photos, monkeypatch):
    """A link in the path's folders (no O_NOFOLLOW stops that): the opened file's own path is what is judged."""
    w, model, ids = photos

    def to_link(path):
        os.rename(w / "photos" / "sub", w / "sub.old")
        os.symlink(w / "private", w / "photos" / "sub")

    _swap_after_the_check(monkeypatch, to_link)
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c:
        r = c.get(f"/v1/thumb/{ids['photos/sub/red.png']}")
        assert not _private(r) and r.status_code == 200 and _pixel(r) == RED
        assert c.get(f"/v1/thumb/{ids['photos/sub/red.png']}").status_code == 403  # other bytes than indexed


def test_without_proc_the_rules_hold_and_a_file_swapped_while_opened_is_refused(photos, monkeypatch):
    """Where /proc/self/fd is missing (macOS, Windows) the path is resolved after the open and must still name the
    opened file."""
    w, model, ids = photos
    readlink = os.readlink

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/self/fd/"):
            raise FileNotFoundError(path)
        return readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", no_proc)
    os.symlink("red.png", w / "photos" / "inside.png")  # a link within its folder: still shown
    ImageIndex(w / "db").update_folders([w / "photos"], model, progress=False)
    target = w / "photos" / "red.png"

    def to_link(path):
        os.remove(path)
        os.symlink(w / "private" / "passport.png", path)

    _swap_after_the_check(monkeypatch, to_link)
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c:
        ids = {os.path.relpath(h["path"], w): h["id"]
               for h in c.post("/v1/search", json={"text": "red", "k": 5}).json()["hits"]}
        r = c.get(f"/v1/thumb/{ids['photos/red.png']}")  # swapped for a link out after the check
        assert not _private(r) and _pixel(r) == RED
        assert c.get(f"/v1/thumb/{ids['photos/red.png']}").status_code == 403  # the link, now
        os.remove(target)
        paint(target, "red")
        assert _pixel(c.get(f"/v1/thumb/{ids['photos/inside.png']}")) == RED
        to_link(target)
        fdopen = os.fdopen

        def opened_then_swapped_back(fd, *args, **kwargs):  # opened through the link; plain again at the check
            os.remove(target)
            paint(target, "red")
            return fdopen(fd, *args, **kwargs)

        monkeypatch.setattr(os, "fdopen", opened_then_swapped_back)
        r = c.get(f"/v1/thumb/{ids['photos/red.png']}")
        assert r.status_code == 403 and not _private(r)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_photo_replaced_by_a_named_pipe_is_answered_at_once(photos):
    w, model, ids = photos
    os.remove(w / "photos" / "red.png")
    os.mkfifo(w / "photos" / "red.png")
    got = {}
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c:
        asking = threading.Thread(target=lambda: got.update(r=c.get(f"/v1/thumb/{ids['photos/red.png']}")))
        asking.start()
        asking.join(5)
        if asking.is_alive():  # it waits for a writer: give it one, so the test ends
            with open(w / "photos" / "red.png", "wb"):
                pass
            asking.join(5)
        assert "r" in got and got["r"].status_code == 422 and "not a regular file" in got["r"].json()["error"]


def test_the_log_says_where_an_annexed_photos_link_points(tmp_path, caplog):
    """git-annex / DataLad: photos/x.png -> ../.git/annex/objects/...; the target is inside the indexed repository
    (in its hidden .git, which scans skip), so "outside the indexed folders" was wrong there."""
    w = tmp_path.resolve()
    obj = w / "repo" / ".git" / "annex" / "objects" / "Xx" / "Yy" / "SHA256E-s1--ab.png" / "SHA256E-s1--ab.png"
    paint(obj, "red")
    (w / "repo" / "photos").mkdir()
    os.symlink(os.path.relpath(obj, w / "repo" / "photos"), w / "repo" / "photos" / "x.png")
    model = FakeModel()
    ImageIndex(w / "db").update_folders([w / "repo"], model, progress=False)
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c, \
            caplog.at_level(logging.WARNING, logger="polymodal.serve.service"):
        r = c.get(c.post("/v1/search", json={"text": "red", "k": 1}).json()["hits"][0]["thumb"])
        assert r.status_code == 403 and "outside the indexed folders" in r.json()["error"]  # the message as it was
        refusal, = [m for m in caplog.messages if "refused" in m]
        assert str(obj) in refusal and "outside the indexed folders" not in refusal
        assert "not in the link's own folder, the uploads or the index's photos" in refusal
