"""The HTTP service end to end with the real `lite` model over an index of the sample gallery."""

import base64
import json
import io
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal import cli, registry  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import ServeSettings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(lite, db):
    with TestClient(create_app(lite, db)) as c:
        yield c


@pytest.fixture()
def db_copy(db, tmp_path):
    """A private copy of the index for tests that change it."""
    path = tmp_path / "db"
    shutil.copytree(db, path)
    return path


def jpeg(gallery, name: str) -> bytes:
    return (gallery / f"{name}.jpg").read_bytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR says width x height, with a tiny (bogus) IDAT: a decompression-bomb-shaped header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def error_of(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and len(body["error"]) > 10
    return body["error"]


def test_embed_texts_and_images_match_the_model(client, lite, gallery):
    r = client.post("/v1/embed", json={"texts": ["a tabby cat", "a cup of coffee"]})
    assert r.status_code == 200 and r.json()["dim"] == 384 and r.json()["model"] == lite.key
    np.testing.assert_allclose(np.array(r.json()["vectors"]), lite.encode_text(["a tabby cat", "a cup of coffee"]), atol=1e-5)

    files = [("image", ("cat.jpg", jpeg(gallery, "cat"), "image/jpeg")), ("image", ("moon.jpg", jpeg(gallery, "moon"), "image/jpeg"))]
    r = client.post("/v1/embed", files=files)
    assert r.status_code == 200
    expected = lite.encode_image([gallery / "cat.jpg", gallery / "moon.jpg"])
    np.testing.assert_allclose(np.array(r.json()["vectors"]), expected, atol=1e-5)

    r = client.post("/v1/embed", json={"images": [base64.b64encode(jpeg(gallery, "cat")).decode()]})
    np.testing.assert_allclose(np.array(r.json()["vectors"]), expected[:1], atol=1e-5)


def test_search_by_text_and_image_with_thumbnails(client, gallery):
    r = client.post("/v1/search", json={"text": "a cup of coffee", "k": 3})
    hits = r.json()["hits"]
    assert r.status_code == 200 and len(hits) == 3 and hits[0]["name"] == "coffee.jpg"
    assert set(hits[0]) >= {"id", "path", "score", "thumb", "rank"} and hits[0]["score"] >= hits[1]["score"]

    r = client.post("/v1/search", files={"image": ("q.jpg", jpeg(gallery, "rocket"), "image/jpeg")}, data={"k": "2"})
    hits = r.json()["hits"]
    assert r.status_code == 200 and len(hits) == 2 and hits[0]["name"] == "rocket.jpg" and hits[0]["score"] > 0.99

    thumb = client.get(hits[0]["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 256
    assert "no image with id" in error_of(client.get("/v1/thumb/999999"), 404)
    error_of(client.get("/v1/thumb/..%2F..%2Fetc%2Fpasswd"), 404)  # ids only: never a path
    assert "valid integer" in error_of(client.get("/v1/thumb/passwd"), 422)


def test_classify_multipart_and_json(client, gallery):
    r = client.post(
        "/v1/classify",
        files=[("image", ("cat.jpg", jpeg(gallery, "cat"), "image/jpeg")), ("image", ("t.jpg", jpeg(gallery, "temple"), "image/jpeg"))],
        data={"labels": "cat,temple,car"},
    )
    results = r.json()["results"]
    assert r.status_code == 200 and [x["labels"][0]["label"] for x in results] == ["cat", "temple"]
    assert abs(sum(x["score"] for x in results[0]["labels"]) - 1) < 1e-4

    r = client.post("/v1/classify", json={"image": base64.b64encode(jpeg(gallery, "cat")).decode(), "labels": ["dog", "cat"], "top_k": 1})
    assert r.status_code == 200 and [x["label"] for x in r.json()["results"][0]["labels"]] == ["cat"]
    assert r.json()["warnings"] == []
    r = client.post("/v1/classify", json={"image": base64.b64encode(jpeg(gallery, "cat")).decode(), "labels": ["dog"]})
    assert r.json()["results"][0]["labels"] == [{"label": "dog", "score": 1.0}]  # one label: 1.0 whatever the image
    assert r.json()["warnings"] and "with one label every image scores 1.0" in r.json()["warnings"][0]
    assert "'{}'" in error_of(client.post("/v1/classify", json={"image": base64.b64encode(jpeg(gallery, "cat")).decode(),
                                                                "labels": ["cat"], "templates": ["{0.__class__}"]}), 400)


class _VQALite:
    """lite plus an answer() method: stands in for a model with a VQA head."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def answer(self, image, question, choices=None):
        return (choices or ["yes"])[0] + f" ({image.size[0]}px)"


def test_vqa_only_for_models_that_answer(client, lite, db, gallery):
    assert client.get("/v1/info").json()["model"]["vqa"] is False
    assert "cannot answer questions" in error_of(client.post("/v1/vqa", json={"question": "what?"}), 404)
    with TestClient(create_app(_VQALite(lite), db)) as vqa:
        assert vqa.get("/v1/info").json()["model"]["vqa"] is True
        r = vqa.post("/v1/vqa", files={"image": ("c.jpg", jpeg(gallery, "cat"), "image/jpeg")},
                     data={"question": "is it a cat?", "choices": "yes"})
        assert r.status_code == 200 and r.json()["answer"].startswith("yes (")
        r = vqa.post("/v1/embed", files={"image": ("c.jpg", jpeg(gallery, "cat"), "image/jpeg")})  # PIL path
        np.testing.assert_allclose(np.array(r.json()["vectors"]), lite.encode_image([gallery / "cat.jpg"]), atol=1e-5)
        assert "no question" in error_of(vqa.post("/v1/vqa", files={"image": ("c.jpg", jpeg(gallery, "cat"), "image/jpeg")}), 400)


def test_vqa_replies_say_what_the_model_warned(lite, coco_yesno, db, gallery):
    with TestClient(create_app(lite, db, vqa_model=coco_yesno)) as c:
        upload = {"image": ("c.jpg", jpeg(gallery, "cat"), "image/jpeg")}
        r = c.post("/v1/vqa", files=upload, data={"question": "what colour is it?"})
        assert r.status_code == 200 and len(r.json()["warnings"]) == 1, r.text
        assert "answers only yes or no; 'what colour is it?' does not read like a yes/no" in r.json()["warnings"][0]
        image = base64.b64encode(jpeg(gallery, "cat")).decode()
        r = c.post("/v1/vqa", json={"image": image, "question": "is it a cat?", "choices": ["yes", "maybe"]})
        said = ["coco-yesno answers only yes or no; these choices score 0: maybe"]
        assert r.status_code == 200 and r.json()["warnings"] == said, r.text
        r = c.post("/v1/vqa", files=upload, data={"question": "is it a cat?"})
        assert r.status_code == 200 and r.json()["warnings"] == []  # nothing carried over from earlier requests


def test_index_add_and_remove(lite, db_copy, gallery):
    with TestClient(create_app(lite, db_copy)) as c:
        before = c.get("/v1/info").json()["index"]["count"]
        # (a byte after the JPEG's end: other bytes than the indexed photos', which an upload would skip)
        files = [("image", ("../../evil.jpg", jpeg(gallery, "cat") + b"\0", "image/jpeg")),
                 ("image", ("clock.jpg", jpeg(gallery, "clock") + b"\0", "image/jpeg"))]
        r = c.post("/v1/index", files=files)
        added = r.json()["added"]
        assert r.status_code == 200 and r.json()["count"] == before + 2 and len(added) == 2
        stored = sorted(p for p in (db_copy / "uploads").rglob("*") if p.is_file())
        # inside the db, in a batch folder of the server's; the client's names made safe, never its folders
        assert [p.name for p in stored] == ["000-evil.jpg", "001-clock.jpg"]
        assert all(p.parent.parent == db_copy / "uploads" and len(p.parent.name) == 32 for p in stored)
        assert not (db_copy.parent / "evil.jpg").exists()
        assert c.get(added[0]["thumb"]).status_code == 200

        hits = c.post("/v1/search", files={"image": ("q.jpg", jpeg(gallery, "clock"), "image/jpeg")}, data={"k": 2}).json()["hits"]
        assert {h["id"] for h in hits} & {a["id"] for a in added}  # the new copy is found

        r = c.post("/v1/index", json={"remove": [a["id"] for a in added] + [987654]})
        assert r.status_code == 200 and r.json()["count"] == before and r.json()["not_found"] == [987654]
        assert not [p for p in (db_copy / "uploads").rglob("*") if p.is_file()]  # uploaded files deleted too
        assert (gallery / "cat.jpg").exists()
        assert "not a readable image" in error_of(c.post("/v1/index", files={"image": ("x.jpg", b"not an image", "image/jpeg")}), 400)
        assert c.get("/v1/info").json()["index"]["count"] == before  # a bad upload adds nothing

        # searches keep answering while an add runs, and see the index either before or after it, never half
        names = sorted(gallery.glob("*.jpg"))[:6]
        adder = threading.Thread(target=lambda: c.post("/v1/index", files=[("image", (p.name, p.read_bytes() + b"\0", "image/jpeg")) for p in names]))
        adder.start()
        seen = set()
        while adder.is_alive() or not seen:
            r = c.post("/v1/search", json={"text": "a photo", "k": 1000})
            assert r.status_code == 200
            seen.add(len(r.json()["hits"]))
        adder.join()
        assert seen <= {before, before + len(names)} and c.get("/v1/info").json()["index"]["count"] == before + len(names)


def test_healthz_metrics_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    client.post("/v1/search", json={"text": "a dog", "k": 1})
    text = client.get("/metrics").text
    assert 'polymodal_requests_total{endpoint="/v1/search",method="POST",status="200"}' in text
    assert "# TYPE polymodal_request_duration_seconds histogram" in text
    assert 'polymodal_request_duration_seconds_bucket{endpoint="/v1/search",le="+Inf"}' in text
    assert 'polymodal_batch_size_bucket{kind="text",le="1"}' in text and "polymodal_index_images 15" in text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "cdn" not in docs.text and "/docs-assets/swagger-ui-bundle.js" in docs.text  # works offline
    js = client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs-assets/..%2Fserve%2Fapp.py").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/embed", "/v1/search", "/v1/classify", "/v1/vqa", "/v1/index", "/healthz"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text


def _concurrent_embeds(c, app, images, monkeypatch, lite):
    """Post one image per thread while the model thread is held, so all 16 requests are queued, then release."""
    calls = []
    real = lite._image_batch
    monkeypatch.setattr(lite, "_image_batch", lambda pixels: calls.append(len(pixels)) or real(pixels))
    batcher = app.state.service.batcher
    gate = threading.Event()
    held = batcher.submit_call(gate.wait)
    results = [None] * len(images)

    def post(i):
        results[i] = c.post("/v1/embed", files={"image": (f"{i}.jpg", images[i], "image/jpeg")})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while batcher.pending() < len(images) and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(60)
    held.result(5)
    monkeypatch.undo()
    assert all(r is not None and r.status_code == 200 for r in results)
    return calls, np.array([r.json()["vectors"][0] for r in results])


def test_micro_batching_merges_concurrent_requests(lite, db, gallery, monkeypatch):
    names = sorted(p.stem for p in gallery.glob("*.jpg"))
    images = [jpeg(gallery, names[i % len(names)]) for i in range(16)]
    alone = np.concatenate([lite.encode_image([b]) for b in images])

    app = create_app(lite, db, settings=ServeSettings(max_batch=32, max_wait_ms=20))
    with TestClient(app) as c:
        calls, vectors = _concurrent_embeds(c, app, images, monkeypatch, lite)
        assert len(calls) < len(images) and sum(calls) == len(images), calls  # merged: 16 requests, fewer passes
        np.testing.assert_allclose(vectors, alone, atol=1e-5)  # and the same answers as unbatched
        assert 'polymodal_batch_requests_bucket{kind="image",le="16"} 1' in c.get("/metrics").text

    app = create_app(lite, db, settings=ServeSettings(batching=False))
    with TestClient(app) as c:
        calls, vectors = _concurrent_embeds(c, app, images, monkeypatch, lite)
        assert calls == [1] * len(images)  # turned off: one pass per request
        np.testing.assert_allclose(vectors, alone, atol=1e-5)


def test_bad_requests_get_clear_4xx_and_the_service_keeps_serving(client, gallery, monkeypatch):
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))

    assert "malformed JSON" in error_of(client.post("/v1/search", content=b'{"text": "a dog",', headers={"content-type": "application/json"}), 400)
    assert "malformed JSON" in error_of(client.post("/v1/search", content=b"[" * 200_000, headers={"content-type": "application/json"}), 400)
    assert "must be an object" in error_of(client.post("/v1/search", json=["a dog"]), 400)
    assert "limit is 20,971,520 bytes" in error_of(client.post("/v1/embed", content=b"\0" * (50 * 2**20), headers={"content-type": "application/json"}), 413)
    assert "not a readable image" in error_of(client.post("/v1/embed", files={"image": ("a.jpg", b"%PDF-1.4 hello", "image/jpeg")}), 400)
    assert "truncated" in error_of(client.post("/v1/embed", files={"image": ("a.jpg", jpeg(gallery, "cat")[:3000], "image/jpeg")}), 400)
    decoded.clear()
    msg = error_of(client.post("/v1/embed", files={"image": ("bomb.png", png_header(20000, 20000), "image/png")}), 413)
    assert msg == "bomb.png declares 400,000,000 pixels; the limit is 40,000,000 pixels (40 MP); send a smaller image"
    assert decoded == []  # refused from the header (Pillow's own bomb check, its limit not quoted), never decoded
    msg = error_of(client.post("/v1/search", files={"image": ("big.png", png_header(8000, 6000), "image/png")}), 413)
    assert "8000x6000" in msg and "40 MP" in msg and decoded == []
    assert "k must be between 1 and 1000" in error_of(client.post("/v1/search", json={"text": "a dog", "k": 10**9}), 400)
    assert "k must be a whole number" in error_of(client.post("/v1/search", json={"text": "a dog", "k": "many"}), 400)
    assert "serves model 'lite'" in error_of(client.post("/v1/search", json={"text": "a dog", "model": "nope"}), 400)
    assert "unknown field" in error_of(client.post("/v1/search", json={"txt": "a dog"}), 400)
    assert "not valid base64" in error_of(client.post("/v1/search", json={"image": "***"}), 400)
    assert "Content-Type" in error_of(client.post("/v1/search", content=b"a dog", headers={"content-type": "text/plain"}), 415)
    assert "no such endpoint" in error_of(client.get("/v1/nothing"), 404)
    assert "not allowed" in error_of(client.get("/v1/search"), 405)
    r = client.post("/v1/search", json={"text": "a cup of coffee", "k": 1})
    assert r.status_code == 200 and r.json()["hits"][0]["name"] == "coffee.jpg"


def test_request_timeout_answers_503_and_recovers(lite, db):
    with TestClient(create_app(lite, db)) as c:  # warm-up under the default timeout: the worker's first text search
        assert c.post("/v1/search", json={"text": "a dog"}).status_code == 200  # took 0.2 s of the 0.5 on a loaded box
    app = create_app(lite, db, settings=ServeSettings(request_timeout_s=0.5))
    with TestClient(app) as c:
        gate = threading.Event()
        app.state.service.batcher.submit_call(gate.wait)  # the model thread is busy
        assert "longer than 0.5 s" in error_of(c.post("/v1/search", json={"text": "a dog"}), 503)
        gate.set()
        assert c.post("/v1/search", json={"text": "a dog"}).status_code == 200


def test_api_key(lite, db):
    with TestClient(create_app(lite, db, api_key="s3cret")) as c:
        assert c.get("/healthz").status_code == 200
        assert "missing API key" in error_of(c.post("/v1/search", json={"text": "a dog"}), 401)
        assert "wrong API key" in error_of(c.post("/v1/search", json={"text": "a dog"}, headers={"X-API-Key": "guess"}), 401)
        assert "missing API key" in error_of(c.get("/metrics"), 401)
        assert "missing API key" in error_of(c.get("/v1/thumb/1"), 401)
        assert c.get("/docs").status_code == 200  # the docs shell holds no data; its calls need the key
        r = c.post("/v1/search", json={"text": "a dog"}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and r.json()["hits"]
        for _ in range(2):  # the docs can send the key ("Authorize"), every time the schema is asked for
            schema = c.get("/openapi.json").json()
            assert schema["components"]["securitySchemes"] == {"ApiKey": {"type": "apiKey", "in": "header",
                                                                          "name": "X-API-Key"},
                                                               "Bearer": {"type": "http", "scheme": "bearer"}}
            assert schema["security"] == [{"ApiKey": []}, {"Bearer": []}]  # either (stop 52: Prometheus's)


def test_without_a_key_the_docs_ask_for_none(client):
    schema = client.get("/openapi.json").json()
    assert "security" not in schema and "securitySchemes" not in schema.get("components", {})


def test_cli_unknown_model_and_missing_index(lite, db, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    assert cli.main(["serve", "--model", "nope", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model 'nope'" in err
    assert cli.main(["serve", "--db", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no index at" in err


# -- a real server process, killed with SIGKILL in the middle of an index add -----------------------------------
def _start_server(db: Path, log: Path):
    import httpx

    # --port 0: the server binds a free port itself and names it in its "serving ... on http://..." line. A port
    # picked here and bound by the server ~2 s later (its imports) could be taken meanwhile by any other process of
    # the test run binding a port (gloo, uvicorn), and the server then stopped with "cannot listen"
    out = log.with_name(f"{log.name}.{time.monotonic_ns()}.out")
    proc = subprocess.Popen(
        [sys.executable, "-m", "polymodal", "serve", "--model", "lite", "--db", str(db), "--port", "0"],
        stdout=open(out, "wb"), stderr=open(log, "ab"),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        serving = re.search(r" on (http://127\.0\.0\.1:\d+) ", out.read_text())
        try:
            if serving and httpx.get(serving[1] + "/healthz", timeout=1).status_code == 200:
                return proc, serving[1]
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("server did not start within 120 s")


def test_kill_9_during_index_add_leaves_a_working_index(db_copy, gallery, tmp_path):
    import httpx

    log = tmp_path / "server.log"
    before = ImageIndex(db_copy).info()["count"]
    proc, url = _start_server(db_copy, log)
    names = sorted(gallery.glob("*.jpg"))
    files = [("image", (f"{i}.jpg", names[i % len(names)].read_bytes() + b"\0" * (i + 1), "image/jpeg")) for i in range(48)]
    outcome = {}

    def post():
        try:
            outcome["response"] = httpx.post(url + "/v1/index", files=files, timeout=120)
        except httpx.HTTPError as exc:  # the server died under us
            outcome["error"] = exc

    sender = threading.Thread(target=post)
    try:
        sender.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the uploads are written just before the index update starts
            if sum(1 for p in (db_copy / "uploads").rglob("*.jpg")) == len(files):
                break
            time.sleep(0.01)
        time.sleep(0.3)  # well inside embedding 48 images
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sender.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()

    count = ImageIndex(db_copy).info()["count"]
    print(f"killed {'mid-way' if 'error' in outcome else 'after the add finished'}; count {before} -> {count}")
    assert count in (before, before + len(files))  # all or nothing
    if "error" in outcome:
        assert count == before  # the add was never acknowledged: nothing of it may show

    proc, url = _start_server(db_copy, log)
    try:
        info = httpx.get(url + "/v1/info").json()
        assert info["index"]["count"] == count
        hits = httpx.post(url + "/v1/search", json={"text": "a cup of coffee", "k": 1000}).json()["hits"]
        assert len(hits) == count and hits[0]["name"] == "coffee.jpg"  # vectors and rows agree
        r = httpx.post(url + "/v1/index", files={"image": ("c.jpg", names[0].read_bytes() + b"\0" * 99, "image/jpeg")}, timeout=60)
        assert r.status_code == 200 and r.json()["count"] == count + 1  # the writer lock was not left behind
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_lone_surrogate_in_text_is_a_400_not_a_500(client, gallery):
    def post(path, body: bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})

    assert '"text": text 1 is not valid Unicode (U+D800' in error_of(post("/v1/search", b'{"text": "\\ud800 dog"}'), 400)
    assert '"texts": text 2 is not valid Unicode (U+DC80' in error_of(post("/v1/embed", b'{"texts": ["ok", "\\udc80"]}'),
                                                                       400)
    image = base64.b64encode(jpeg(gallery, "cat")).decode()
    body = json.dumps({"image": image, "labels": ["cat", "\udc80"]}).encode()
    assert '"labels": text 2 is not valid Unicode' in error_of(post("/v1/classify", body), 400)
    assert client.post("/v1/search", json={"text": "a dog", "k": 1}).status_code == 200  # still serving


def test_a_48_mp_phone_jpeg_is_searched_while_a_48_mp_png_is_refused(client):
    """A JPEG decodes at reduced scale, so its 40 MP limit counts the decoded size: 48 MP phone photos were 413."""
    import io

    from PIL import Image

    photo = io.BytesIO()
    Image.new("RGB", (8000, 6000), (200, 120, 40)).save(photo, "JPEG", quality=50)
    r = client.post("/v1/search", files={"image": ("phone.jpg", photo.getvalue(), "image/jpeg")}, data={"k": "1"})
    assert r.status_code == 200, r.text
    msg = error_of(client.post("/v1/search", files={"image": ("big.png", png_header(8000, 6000), "image/png")}), 413)
    assert msg.startswith("big.png is 8000x6000 = 48,000,000 pixels; the limit is 40,000,000 pixels (40 MP) decoded")


def test_classify_refuses_more_prompts_than_fit_a_request(client, gallery):
    image = base64.b64encode(jpeg(gallery, "cat")).decode()
    labels = [f"label {i}" for i in range(300)]
    templates = [f"a photo of a {{}}, take {i}." for i in range(14)]
    msg = error_of(client.post("/v1/classify", json={"image": image, "labels": labels, "templates": templates}), 413)
    assert msg == ("300 labels x 14 templates = 4,200 prompts; the limit is 4,000 per request: send fewer labels or "
                   "templates")
    r = client.post("/v1/classify", json={"image": image, "labels": labels[:2], "templates": templates})
    assert r.status_code == 200, r.text


def test_head_on_the_page_and_healthz_is_200_without_a_body(client):
    for path in ("/", "/healthz"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code)
    assert client.head("/v1/search").status_code == 405  # the API's POST endpoints stay POST only


def test_behind_a_proxy_at_a_sub_path_the_page_and_docs_point_there(lite, db):
    with TestClient(create_app(lite, db), root_path="/photos") as c:
        page = c.get("/").text
        assert 'const ROOT_PATH = "/photos";' in page and "fetch(ROOT_PATH + path" in page
        docs = c.get("/docs").text
        assert "'/photos/openapi.json'" in docs or '"/photos/openapi.json"' in docs
        hits = c.post("/v1/search", json={"text": "a cat", "k": 1}).json()["hits"]
        assert hits[0]["thumb"].startswith("/photos/v1/thumb/")
    with TestClient(create_app(lite, db)) as c:
        assert 'const ROOT_PATH = "";' in c.get("/").text
