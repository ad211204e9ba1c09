"""Stop 51, a review of the stop's serve and notebook commits:
- a folder of the index that became a link after indexing (a shared or synced folder: git pull, Syncthing) showed
  the photo of this machine its sender chose by name (check_servable took the link's own folder from the link);
- `serve --max-connections N` served N - 1 connections (uvicorn counts the asking one): 1 answered every request 503;
- the web page named the connection limit's plain-text 503 as "not from the server itself";
- protocol.py reads H11Protocol's attributes: a uvicorn that renamed `conn` would have dropped every request."""

import io
import os
import shutil
import socket

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import create_app  # noqa: E402
from test_index import FakeModel, paint  # noqa: E402
from test_s49_webpage import server  # noqa: E402,F401 - a fixture: a served lite index
from test_s51_thumbroots import _served, live  # noqa: E402
from test_s51_webpage import search_answered_by  # noqa: E402
from test_web_page import browser_tools  # noqa: E402,F401 - browser_tools is a fixture


def _pixel(response):
    return Image.open(io.BytesIO(response.content)).convert("RGB").getpixel((4, 4))


def test_a_shared_folder_that_became_a_link_shows_no_photo_of_its_target(tmp_path):
    w = tmp_path.resolve()
    paint(w / "shared" / "trip" / "IMG_0001.png", "red")  # a colleague's photo, a camera's name
    paint(w / "moved" / "IMG_0002.png", "blue")
    (w / "Pictures").mkdir()
    Image.new("RGB", (64, 64), (250, 200, 0)).save(w / "Pictures" / "IMG_0001.png")  # this machine's own
    model = FakeModel()
    ImageIndex(w / "db").update_folders([w / "shared", w / "moved"], model, progress=False)
    shutil.rmtree(w / "shared" / "trip")  # a sync later makes trip/ a link to the private folder
    os.symlink("../Pictures", w / "shared" / "trip")
    shutil.move(w / "moved", w / "disk2")  # the control: a folder moved to another disk and linked back
    os.symlink(w / "disk2", w / "moved")
    with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c:
        thumbs = {os.path.relpath(h["path"], w): h["thumb"]
                  for h in c.post("/v1/search", json={"text": "red", "k": 5}).json()["hits"]}
        r = c.get(thumbs["shared/trip/IMG_0001.png"])
        assert r.status_code == 403, _pixel(r)  # was 200 with the private photo's pixels
        r = c.get(thumbs["moved/IMG_0002.png"])
        assert r.status_code == 200 and _pixel(r) == (0, 0, 254)


def test_max_connections_1_serves_one_connection(lite, db, monkeypatch):
    """Live, as `serve --max-connections 1` runs: the first connection is served, a second one at once gets 503."""
    srv = _served(monkeypatch, lite, db, "--max-connections", "1")
    monkeypatch.undo()  # the real run() again

    def ask(conn):
        conn.settimeout(5)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return conn.recv(100).split(b"\r\n")[0]

    with live(srv, "error") as port:
        with socket.create_connection(("127.0.0.1", port)) as first:
            assert ask(first) == b"HTTP/1.1 200 OK"  # was 503: uvicorn counted this connection against the limit
            with socket.create_connection(("127.0.0.1", port)) as second:  # while the first is kept alive
                assert ask(second) == b"HTTP/1.1 503 Service Unavailable"


def test_the_connection_limits_503_is_not_blamed_on_a_proxy(browser_tools, server, tmp_path):  # noqa: F811
    # uvicorn's own answer past --max-connections (its service_unavailable): plain text, no JSON
    status = search_answered_by(browser_tools, server, tmp_path, 503, "text/plain; charset=utf-8",
                                "Service Unavailable")
    assert "HTTP 503" in status and "too many connections" in status and "not from the server" not in status


def test_a_uvicorn_whose_h11_protocol_renamed_conn_still_serves(monkeypatch, caplog):
    """protocol.py reads H11Protocol's `conn`; a uvicorn that renamed it dropped every request unanswered (an
    AttributeError in data_received aborts the connection). Simulated: the installed h11_impl with conn renamed."""
    import logging
    import sys
    import types

    uvicorn = pytest.importorskip("uvicorn")
    import uvicorn.protocols.http.h11_impl as real

    from polymodal.serve.protocol import header_deadline_protocol

    renamed = types.ModuleType(real.__name__)
    renamed.__file__ = real.__file__
    with open(real.__file__) as f:
        exec(compile(f.read().replace("self.conn", "self._h11conn"), real.__file__, "exec"), renamed.__dict__)
    monkeypatch.setitem(sys.modules, real.__name__, renamed)

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    srv = uvicorn.Server(uvicorn.Config(app, log_level="error", http=header_deadline_protocol(0.5), lifespan="off"))
    with live(srv, "error") as port:
        with caplog.at_level(logging.WARNING, logger="polymodal.serve.protocol"), \
                socket.create_connection(("127.0.0.1", port)) as conn:
            conn.settimeout(5)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 200")  # was b"": the connection dropped
        assert any("without a deadline for request headers" in m for m in caplog.messages)
