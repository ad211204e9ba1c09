"""Exposure leftovers of `polymodal serve` (stop 53): under --hide-paths a thumbnail's ?v= no longer confirms a
guessed path offline (keyed by a secret of the server process) and a Qdrant hit names no host; every answer has
X-Frame-Options / CSP frame-ancestors and nosniff (no other site frames the page); /openapi.json documents X-Request-ID.
Seconds on a CPU, with the fake colour model of test_index (browser tests: headless Chromium, as test_web_page)."""

import hashlib
import sqlite3
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import ServeSettings, create_app  # noqa: E402
from test_index import FakeModel, paint  # noqa: E402
from test_web_page import _page, _serving, browser_tools  # noqa: E402, F401 - browser_tools is a fixture

HIDE = ServeSettings(hide_paths=True)


@pytest.fixture
def place(tmp_path):
    """tmp/alice/acme-merger/photos/{red,blue}.png indexed in tmp/pics.idx -> (tmp, db, model)."""
    photos = tmp_path / "alice" / "acme-merger" / "photos"
    paint(photos / "red.png", "red")
    paint(photos / "blue.png", "blue")
    model, db = FakeModel(), tmp_path / "pics.idx"
    ImageIndex(db).update_folders([photos], model, progress=False)
    return tmp_path, db, model


def _versions(c) -> dict:
    """id -> the ?v= of its thumbnail in a search's hits."""
    hits = c.post("/v1/search", json={"text": "red", "k": 10}).json()["hits"]
    return {h["id"]: parse_qs(urlsplit(h["thumb"]).query)["v"][0] for h in hits}


def _unkeyed(db) -> dict:
    """id -> ?v= as anyone holding the path (and, for a local index, the file's sha256) computes it."""
    with sqlite3.connect(db / "meta.sqlite") as conn:
        rows = conn.execute("SELECT id, path, sha256 FROM images").fetchall()
    return {i: hashlib.blake2b(f"{p}\0{d}".encode(), digest_size=4).hexdigest() for i, p, d in rows}


def test_under_hide_paths_a_thumbnails_version_confirms_no_guessed_path(place):
    _, db, model = place
    with TestClient(create_app(model, db), base_url="http://localhost") as c:
        assert _versions(c) == _unkeyed(db)  # by default: stable across restarts (browsers keep thumbnails a day)
    with TestClient(create_app(model, db, settings=HIDE), base_url="http://localhost") as c:
        hidden = _versions(c)
        assert _versions(c) == hidden  # the same URLs from one server: its thumbnails stay cached
        png = paint(db.parent / "upload" / "green.png", "green").read_bytes()
        added = c.post("/v1/index", files={"image": ("green.png", png, "image/png")}).json()
        new = added["added"][0]
        version = parse_qs(urlsplit(new["thumb"]).query)["v"][0]
        assert version != _unkeyed(db)[new["id"]] and _versions(c)[new["id"]] == version  # an upload's too, the same
    unkeyed = _unkeyed(db)
    assert all(v != unkeyed[i] for i, v in hidden.items()), (hidden, unkeyed)
    with TestClient(create_app(model, db, settings=HIDE), base_url="http://localhost") as c:
        assert _versions(c).keys() >= hidden.keys() and all(_versions(c)[i] != v for i, v in hidden.items())


def test_under_hide_paths_a_collections_hits_name_no_host(place, monkeypatch):
    pytest.importorskip("qdrant_client")
    from polymodal.index.qdrant import QdrantCollection

    tmp, db, model = place
    served = QdrantCollection(str(tmp / "q"), "photos")
    served.push(ImageIndex(db), progress=False)
    with TestClient(create_app(model, served), base_url="http://localhost") as c:
        assert all(h["host"] for h in c.post("/v1/search", json={"text": "red"}).json()["hits"])
    with TestClient(create_app(model, served, settings=HIDE), base_url="http://localhost") as c:
        hits = c.post("/v1/search", json={"text": "red"}).json()["hits"]
        assert hits and not any("host" in h for h in hits)
        real = served.paths_for
        monkeypatch.setattr(served, "paths_for", lambda ids: {i: ("/elsewhere/red.png", "box7") for i in real(ids)})
        r = c.get(hits[0]["thumb"])
    assert r.status_code == 404 and "box7" not in r.text and "is on another host" in r.json()["error"]


def test_every_answer_forbids_framing_and_sniffing(place):
    _, db, model = place
    with TestClient(create_app(model, db), base_url="http://localhost") as c:
        hit = c.post("/v1/search", json={"text": "red", "k": 1})
        answers = {"page": c.get("/"), "docs": c.get("/docs"), "search": hit,
                   "thumb": c.get(hit.json()["hits"][0]["thumb"]), "404": c.get("/v1/nothing"),
                   "host refused": c.get("/", headers={"host": "evil.example"})}
    for what, r in answers.items():
        assert (r.headers.get("x-frame-options"), r.headers.get("content-security-policy"),
                r.headers.get("x-content-type-options")) == ("DENY", "frame-ancestors 'none'", "nosniff"), what
    assert [r.status_code for r in answers.values()] == [200, 200, 200, 200, 404, 403]


def test_openapi_documents_x_request_id_on_every_operation(place):
    _, db, model = place
    with TestClient(create_app(model, db, api_key="k"), base_url="http://localhost") as c:
        c.get("/openapi.json", headers={"x-api-key": "k"})  # twice: FastAPI's schema is cached, nothing repeats
        schema = c.get("/openapi.json", headers={"x-api-key": "k"}).json()
    components = schema["components"]
    assert components["parameters"]["RequestId"]["name"] == "X-Request-ID"
    assert components["parameters"]["RequestId"]["in"] == "header"
    assert "description" in components["headers"]["RequestId"]
    operations = [op for ops in schema["paths"].values() for op in ops.values()]
    assert len(operations) > 8
    for op in operations:
        assert op["parameters"].count({"$ref": "#/components/parameters/RequestId"}) == 1, op["summary"]
        assert all(reply["headers"]["X-Request-ID"] == {"$ref": "#/components/headers/RequestId"}
                   for reply in op["responses"].values()), op["summary"]


def test_docs_render_the_header_and_no_page_frames_the_server(browser_tools, place, tmp_path):
    _, db, model = place
    with _serving(create_app(model, db)) as url, _page(browser_tools, tmp_path / "browser") as page:
        page.goto(url + "/docs", wait_until="domcontentloaded")
        page.wait_for_selector(".opblock-summary-path[data-path='/v1/search']", timeout=20_000)
        page.click(".opblock-summary-path[data-path='/v1/search']")
        page.wait_for_selector(".parameters-col_name:has-text('X-Request-ID')", timeout=20_000)
        assert page.errors == []
        page.goto(url + "/", wait_until="domcontentloaded")  # the page itself still works
        page.wait_for_function("$('meta').textContent.includes('images')", timeout=20_000)
        # another page (here: one of its own origin, which 'none' refuses as well) frames it: left empty
        page.set_content(f'<iframe src="{url}/" width=600 height=400></iframe>')
        page.wait_for_timeout(1500)
        framed = page.frames[1]
        assert framed.evaluate("document.querySelector('#q') === null")
