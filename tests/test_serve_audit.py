"""What a mutation audit of the HTTP service showed slipping through: auth on every endpoint, body/item/id limits
(boundaries and status codes), metrics labels and counts, index add/remove over HTTP, input parsing details, /v1/info,
and the `polymodal serve` options reaching the app. Each test was checked to fail on its mutation."""

import asyncio
import base64
import io
import re
import shutil
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal import cli, registry  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import ServeSettings, create_app  # noqa: E402
from polymodal.serve.middleware import LimitsMiddleware  # noqa: E402
from test_serve import _VQALite  # noqa: E402 - lite plus an answer() method

KEY = "s3cret"


def error_of(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def small_png(colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, "PNG")
    return out.getvalue()


def counter(text: str, endpoint: str, method: str, status: int) -> int:
    m = re.search(rf'^polymodal_requests_total\{{endpoint="{re.escape(endpoint)}",method="{method}",status="{status}"\}} (\d+)$',
                  text, re.M)
    return int(m.group(1)) if m else 0


@pytest.fixture(scope="module")
def cat(gallery):
    return (gallery / "cat.jpg").read_bytes()


@pytest.fixture(scope="module")
def small():
    """Small limits, so each boundary is cheap to reach."""
    return ServeSettings(max_images_per_request=2, max_labels=3, max_remove_ids=3)


@pytest.fixture(scope="module")
def client(lite, db, small):
    with TestClient(create_app(lite, db, settings=small)) as c:
        yield c


@pytest.fixture()
def own_index(lite, gallery, tmp_path):
    """An index of private copies of two gallery images (tests here may delete files)."""
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("cat", "moon"):
        shutil.copy(gallery / f"{name}.jpg", pics / f"{name}.jpg")
    db = tmp_path / "db"
    ImageIndex(db).update(pics, lite, progress=False)
    return pics, db


# -- API key ------------------------------------------------------------------------------------------------------
def test_every_data_endpoint_needs_the_key_and_only_the_shell_is_open(lite, db, cat):
    with TestClient(create_app(_VQALite(lite), db, api_key=KEY)) as c:
        img = {"image": ("c.jpg", cat, "image/jpeg")}
        calls = [
            ("GET", "/v1/info", {}), ("GET", "/metrics", {}), ("GET", "/v1/thumb/1", {}),
            ("POST", "/v1/embed", {"json": {"texts": ["a dog"]}}), ("POST", "/v1/search", {"json": {"text": "a dog"}}),
            ("POST", "/v1/classify", {"files": img, "data": {"labels": "cat,dog"}}),
            ("POST", "/v1/vqa", {"files": img, "data": {"question": "a cat?"}}),
            ("POST", "/v1/index", {"json": {"remove": [987654]}}),
        ]
        for method, path, kw in calls:
            assert "missing API key" in error_of(c.request(method, path, **kw), 401), path
            assert "wrong API key" in error_of(c.request(method, path, headers={"X-API-Key": "nope"}, **kw), 401), path
            assert "wrong API key" in error_of(c.request(method, path, headers={"X-API-Key": ""}, **kw), 401), path
            r = c.request(method, path, headers={"X-API-Key": KEY}, **kw)
            assert r.status_code == 200, (path, r.text)
        for path in ("/healthz", "/", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 200, path


# -- body size and timeouts (the limits middleware on its own) ------------------------------------------------------
def _run_limits(headers, chunks, max_body=10):
    """Run LimitsMiddleware over a request with these headers and body chunks: (status, body, body the app saw)."""
    sent, seen, received = [], [], []

    async def app(scope, receive, send):
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    parts = list(chunks)

    async def receive():
        body = parts.pop(0)
        received.append(body)
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/embed", "headers": headers}
    asyncio.run(LimitsMiddleware(app, max_body_bytes=max_body, timeout_s=5)(scope, receive, send))
    return sent[0]["status"], sent[1]["body"], seen, received


def test_body_limit_boundaries():
    # exactly the limit passes, declared or streamed; one byte more is 413
    assert _run_limits([(b"content-length", b"10")], [b"0123456789"])[::2] == (200, [b"0123456789"])
    assert _run_limits([], [b"01234", b"56789"])[::2] == (200, [b"0123456789"])
    status, body, seen, _ = _run_limits([], [b"01234", b"567890"])
    assert status == 413 and seen == [] and b"limit is 10 bytes" in body


def test_a_declared_oversize_body_is_refused_unread():
    status, body, seen, received = _run_limits([(b"content-length", b"5000000")], [b"x" * 11])
    assert status == 413 and received == [] and seen == []  # refused from the header: not a byte read
    assert b"5,000,000 bytes" in body


def test_a_non_numeric_content_length_is_400():
    status, body, seen, _ = _run_limits([(b"content-length", b"ten")], [b"{}"])
    assert status == 400 and b"Content-Length" in body and seen == []


def test_an_index_add_is_not_cut_off_by_the_timeout(lite, db, tmp_path, cat):
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    app = create_app(lite, copy, settings=ServeSettings(request_timeout_s=0.3))
    with TestClient(app) as c:
        gate = threading.Event()
        app.state.service.batcher.submit_call(gate.wait)  # the model thread is busy past the timeout
        out = {}
        t = threading.Thread(target=lambda: out.update(r=c.post("/v1/index", files={"image": ("c.jpg", cat + b"\0", "image/jpeg")})))
        t.start()
        time.sleep(0.8)
        gate.set()
        t.join(30)
        assert out["r"].status_code == 200, out["r"].text
        assert out["r"].json()["count"] == 16


# -- metrics ----------------------------------------------------------------------------------------------------
def test_metrics_count_each_request_by_route_template_including_401_and_405(lite, db):
    with TestClient(create_app(lite, db, api_key=KEY)) as c:
        key = {"X-API-Key": KEY}
        c.post("/v1/search", json={"text": "a dog", "k": 1}, headers=key)
        c.post("/v1/search", json={"text": "a cat", "k": 1}, headers=key)
        c.post("/v1/search", json={"text": "a cat"})  # 401
        c.get("/v1/thumb/1", headers=key)
        c.get("/v1/thumb/2", headers=key)
        c.get("/v1/search", headers=key)  # 405
        text = c.get("/metrics", headers=key).text
    assert counter(text, "/v1/search", "POST", 200) == 2
    assert counter(text, "/v1/search", "POST", 401) == 1
    assert counter(text, "/v1/thumb/{image_id}", "GET", 200) == 2  # ids never become labels
    assert '"/v1/thumb/1"' not in text
    assert counter(text, "/v1/search", "GET", 405) == 1


# -- limits on items per request ----------------------------------------------------------------------------------
def test_k_bounds_and_default(client):
    assert "between 1 and 1000" in error_of(client.post("/v1/search", json={"text": "a dog", "k": 0}), 400)
    r = client.post("/v1/search", json={"text": "a dog"})
    assert r.status_code == 200 and r.json()["k"] == 10 and len(r.json()["hits"]) == 10
    assert [h["rank"] for h in r.json()["hits"]] == list(range(1, 11))
    r = client.post("/v1/search", files={"image": ("p.png", small_png(), "image/png")})  # multipart: same default
    assert r.status_code == 200 and len(r.json()["hits"]) == 10


def test_images_per_request_limit_json_and_multipart(client):
    png = small_png()
    r = client.post("/v1/embed", json={"images": [b64(png)] * 2})
    assert r.status_code == 200 and len(r.json()["vectors"]) == 2  # exactly the limit
    assert "3 images in one request; the limit is 2" in error_of(client.post("/v1/embed", json={"images": [b64(png)] * 3}), 413)
    assert "3 images" in error_of(client.post("/v1/embed", json={"image": b64(png), "images": [b64(png)] * 2}), 413)
    files = [("image", (f"{i}.png", png, "image/png")) for i in range(3)]
    msg = error_of(client.post("/v1/embed", files=files), 413)  # the same status as over JSON
    assert "more than 2 images in one request; the limit is 2" in msg


def test_labels_limit_is_413_and_top_k_is_bounded_by_it(client, cat):
    assert "4 labels; the limit is 3: send at most 3 per request" in error_of(
        client.post("/v1/classify", json={"image": b64(cat), "labels": ["a", "b", "c", "d"]}), 413)
    assert "top_k must be between 1 and 3" in error_of(
        client.post("/v1/classify", json={"image": b64(cat), "labels": ["cat", "dog"], "top_k": 4}), 400)


def test_repeated_form_labels_and_data_urls(client, cat):
    r = client.post("/v1/classify", files={"image": ("c.jpg", cat, "image/jpeg")}, data={"labels": ["cat", "dog"]})
    assert r.status_code == 200 and sorted(x["label"] for x in r.json()["results"][0]["labels"]) == ["cat", "dog"]
    r = client.post("/v1/embed", json={"image": "data:image/jpeg;base64," + b64(cat)})
    assert r.status_code == 200 and len(r.json()["vectors"]) == 1
    r = client.post("/v1/search", json={"image": "data:image/jpeg;base64," + b64(cat), "k": 1})
    assert r.status_code == 200 and r.json()["hits"][0]["name"] == "cat.jpg"


def test_one_image_where_one_is_meant_and_not_texts_with_images(lite, db, client, cat):
    two = [("image", ("a.jpg", cat, "image/jpeg")), ("image", ("b.jpg", cat, "image/jpeg"))]
    assert "one image per request" in error_of(client.post("/v1/search", files=two), 400)
    assert "not both" in error_of(client.post("/v1/embed", json={"texts": ["a cat"], "images": [b64(cat)]}), 400)
    with TestClient(create_app(_VQALite(lite), db)) as c:
        assert "exactly one image" in error_of(c.post("/v1/vqa", files=two, data={"question": "a cat?"}), 400)


# -- index add / remove over HTTP -----------------------------------------------------------------------------------
def test_remove_validates_ids(client):
    before = client.get("/v1/info").json()["index"]["count"]
    assert "at least one image id" in error_of(client.post("/v1/index", json={"remove": []}), 400)
    assert "integer image ids" in error_of(client.post("/v1/index", json={"remove": [True]}), 400)
    assert "4 ids in one request; the limit is 3" in error_of(client.post("/v1/index", json={"remove": [1, 2, 3, 4]}), 413)
    r = client.post("/v1/index", json={"remove": [-5, 2**63]})
    assert r.status_code == 200 and r.json()["removed"] == [] and sorted(r.json()["not_found"]) == [-5, 2**63]
    assert client.get("/v1/info").json()["index"]["count"] == before
    assert "no image with id" in error_of(client.get(f"/v1/thumb/{2**63}"), 404)


def test_a_bad_file_anywhere_in_an_add_adds_nothing(lite, db, tmp_path, cat):
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    with TestClient(create_app(lite, copy)) as c:
        files = [("image", ("good.jpg", cat, "image/jpeg")), ("image", ("bad.jpg", b"not an image", "image/jpeg"))]
        msg = error_of(c.post("/v1/index", files=files), 400)
        assert "bad.jpg is not a readable image" in msg
        assert c.get("/v1/info").json()["index"]["count"] == 15
        assert not [p for p in (copy / "uploads").rglob("*") if p.is_file()]


def test_removing_an_indexed_file_keeps_the_users_file_and_forgets_its_thumbnail(lite, own_index):
    pics, db = own_index
    with TestClient(create_app(lite, db)) as c:
        hits = c.post("/v1/search", json={"text": "a cat", "k": 2}).json()["hits"]
        victim = next(h for h in hits if h["name"] == "cat.jpg")
        assert c.get(victim["thumb"]).status_code == 200  # now cached
        r = c.post("/v1/index", json={"remove": [victim["id"]]})
        assert r.status_code == 200 and r.json()["removed"] == [victim["id"]] and r.json()["count"] == 1
        assert (pics / "cat.jpg").exists()  # only files the server uploaded are deleted
        assert "no image with id" in error_of(c.get(victim["thumb"]), 404)


# -- /v1/info -------------------------------------------------------------------------------------------------------
def test_info_reports_model_index_batching_and_limits(client, lite, small):
    info = client.get("/v1/info").json()
    assert info["model"] == {"name": lite.name, "key": lite.key, "dim": 384, "vqa": False, "vqa_model": None,
                             "caption_model": None,
                             "runtime": "torch", "precision": "fp32"}
    assert info["index"]["count"] == 15
    assert info["batching"] == {"enabled": True, "max_batch": 8, "max_wait_ms": 5.0}
    assert info["limits"]["max_images_per_request"] == 2 and info["limits"]["max_body_bytes"] == 20 * 2**20


# -- `polymodal serve`: its options reach the app -------------------------------------------------------------------
def test_cli_serve_passes_key_body_limit_and_timeout(lite, db, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.update(app=self.config.app))
    args = ["serve", "--db", str(db), "--port", "0", "--api-key", KEY, "--max-body-mb", "3", "--timeout", "7"]
    assert cli.main(args) == 0
    app = served["app"]
    settings = app.state.service.settings
    assert settings.max_body_bytes == 3 * 2**20 and settings.request_timeout_s == 7.0
    with TestClient(app) as c:
        assert "missing API key" in error_of(c.get("/v1/info"), 401)
        assert c.get("/v1/info", headers={"X-API-Key": KEY}).status_code == 200


def test_cli_serve_refuses_a_bad_port(lite, db, capsys, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # never serve, whatever happens
    assert cli.main(["serve", "--db", str(db), "--port", "70000"]) == 2
    assert "--port must be 0-65535" in capsys.readouterr().err


def test_cli_serve_refuses_a_blank_api_key(lite, db, capsys, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # never serve, whatever happens
    for key in ("", "   "):  # would have served with no authentication at all
        assert cli.main(["serve", "--db", str(db), "--port", "0", "--api-key", key]) == 2
        assert "API key (--api-key or $POLYMODAL_API_KEY) is blank" in capsys.readouterr().err
    monkeypatch.setenv("POLYMODAL_API_KEY", "")  # e.g. an env file's "POLYMODAL_API_KEY=" with the value missing
    assert cli.main(["serve", "--db", str(db), "--port", "0"]) == 2
    assert "is blank" in capsys.readouterr().err
    with pytest.raises(PolymodalError, match="is blank"):  # the library refuses it too, not only the CLI
        create_app(lite, db, api_key=" ")
