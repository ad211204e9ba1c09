"""What `polymodal serve` shows and how many it serves (stop 51): a thumbnail only of a file that really lies in the
indexed folders or the server's uploads (a symlinked file in a folder someone sent showed any photo of this machine to
every client), unless --follow-symlinks; a connection limit and a deadline for request headers. Seconds on a CPU,
with a fake model (the CLI tests use the session's `lite`)."""

import contextlib
import io
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal import cli, registry  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import ServeSettings, create_app  # noqa: E402
from test_index import FakeModel, paint  # noqa: E402

PRIVATE = (250, 200, 0)


@pytest.fixture
def linked(tmp_path):
    """An index of photos/ (a plain photo, a link inside photos/, a link out to private/), dataset/ (train/ links
    into all/) and moved/ (moved to another disk after indexing, linked back) -> (folder, model, {name: id})."""
    w = tmp_path.resolve()
    paint(w / "photos" / "red.png", "red")
    paint(w / "photos" / "sub" / "blue.png", "blue")
    os.symlink("sub/blue.png", w / "photos" / "inside.png")
    (w / "private").mkdir()
    Image.new("RGB", (64, 64), PRIVATE).save(w / "private" / "passport.png")
    os.symlink(w / "private" / "passport.png", w / "photos" / "holiday.png")
    paint(w / "dataset" / "all" / "green.png", "green")
    (w / "dataset" / "train").mkdir()
    os.symlink("../all/green.png", w / "dataset" / "train" / "green.png")
    paint(w / "moved" / "yellow.png", "yellow")
    model = FakeModel()
    ImageIndex(w / "db").update_folders([w / "photos", w / "dataset", w / "moved"], model, progress=False)
    shutil.move(w / "moved", w / "disk2")
    os.symlink(w / "disk2", w / "moved")
    with sqlite3.connect(w / "db" / "meta.sqlite") as con:
        ids = {os.path.relpath(p, w): i for p, i in con.execute("SELECT path, id FROM images")}
    return w, model, ids


def _pixel(response):
    return Image.open(io.BytesIO(response.content)).convert("RGB").getpixel((4, 4))


def test_a_link_out_of_the_indexed_folders_gets_no_thumbnail(linked, caplog):
    w, model, ids = linked
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c, \
            caplog.at_level(logging.WARNING, logger="polymodal.serve.service"):
        for _ in range(2):
            r = c.get(f"/v1/thumb/{ids['photos/holiday.png']}")
            assert r.status_code == 403 and r.headers["content-type"] == "application/json"
            assert "outside the indexed folders" in r.json()["error"] and "--follow-symlinks" in r.json()["error"]
            assert str(w / "private") not in r.text  # the client is not told where the link points
        refusals = [m for m in caplog.messages if "refused" in m]
        assert len(refusals) == 1 and str(w / "private" / "passport.png") in refusals[0]  # logged once per folder
        # searches still find it (the row is the index's); only its pixels are not shown
        hits = c.post("/v1/search", json={"text": "red", "k": 10}).json()["hits"]
        assert ids["photos/holiday.png"] in {h["id"] for h in hits}


def test_links_inside_the_indexed_folders_and_uploads_still_show(linked):
    w, model, ids = linked
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c:
        for name, colour in [("photos/red.png", (254, 0, 0)), ("photos/inside.png", (0, 0, 254)),
                             ("dataset/train/green.png", (0, 255, 1)), ("moved/yellow.png", (255, 255, 0))]:
            r = c.get(f"/v1/thumb/{ids[name]}")
            assert r.status_code == 200 and _pixel(r) == colour, name
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (9, 9, 200)).save(buf, "PNG")
        added = c.post("/v1/index", files={"image": ("mine.png", buf.getvalue(), "image/png")}).json()["added"]
        assert c.get(added[0]["thumb"]).status_code == 200


def test_follow_symlinks_serves_a_link_out(linked):
    w, model, ids = linked
    app = create_app(model, w / "db", settings=ServeSettings(follow_symlinks=True))
    with TestClient(app, base_url="http://localhost") as c:
        r = c.get(f"/v1/thumb/{ids['photos/holiday.png']}")
        assert r.status_code == 200 and _pixel(r) == (249, 200, 1)  # the private photo, as the operator asked
        assert "follow_symlinks" not in c.get("/v1/info").json()["limits"]


def test_a_link_repointed_after_its_thumbnail_was_cached_is_refused(linked):
    w, model, ids = linked
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c:
        assert c.get(f"/v1/thumb/{ids['photos/inside.png']}").status_code == 200
        os.remove(w / "photos" / "inside.png")
        os.symlink(w / "private" / "passport.png", w / "photos" / "inside.png")
        assert c.get(f"/v1/thumb/{ids['photos/inside.png']}").status_code == 403


# -- `polymodal serve`: the flags reach the server ------------------------------------------------------------------
def _served(monkeypatch, lite, db, *flags):
    """`polymodal serve FLAGS` up to uvicorn's run -> the uvicorn.Server it would run."""
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.update(server=self))
    assert cli.main(["serve", "--db", str(db), "--port", "0", *flags]) == 0
    return served["server"]


def test_cli_serve_limits_connections_and_follows_links_only_when_asked(lite, db, monkeypatch, capsys):
    server = _served(monkeypatch, lite, db)
    assert server.config.limit_concurrency == 257  # + 1: uvicorn counts the asking connection (s51 diffreviewA)
    assert server.config.app.state.service.settings.follow_symlinks is False
    server = _served(monkeypatch, lite, db, "--max-connections", "12", "--follow-symlinks")
    assert server.config.limit_concurrency == 13
    assert server.config.app.state.service.settings.follow_symlinks is True
    assert cli.main(["serve", "--db", str(db), "--max-connections", "0"]) == 2
    assert "--max-connections must be at least 1, got 0" in capsys.readouterr().err


def test_a_connection_whose_headers_do_not_come_is_closed(lite, db, monkeypatch):
    """Live: a real uvicorn server as `serve` configures it (the header deadline cut to 0.5 s)."""
    from polymodal.serve import protocol

    monkeypatch.setattr(protocol, "HEADER_TIMEOUT_S", 0.5)
    server = _served(monkeypatch, lite, db, "--max-connections", "2")
    monkeypatch.undo()  # the real run() again
    with live(server) as port:
        silent, slow = socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: ")  # half a header block, then nothing
        for conn in (silent, slow):
            conn.settimeout(5)
            start = time.time()
            assert conn.recv(100) == b"" and time.time() - start < 4  # closed by the server, not the 5 s here
            conn.close()
        with socket.create_connection(("127.0.0.1", port)) as conn:  # the slots are free again
            conn.settimeout(5)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 200")


@contextlib.contextmanager
def live(server, log_level="warning"):
    """A uvicorn Server (as `serve` configured it) running in a thread on a free local port -> the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server.config.log_level = log_level
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
