"""Serve review (s38): duplicate uploads, an API key read with its newline, form text that is not UTF-8, thumbnails
of a photo edited in place, wrapped base64, /v1/caption in chunks."""

import base64
import io
import shutil
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import ServeSettings, create_app  # noqa: E402


def test_the_same_photo_uploaded_twice_is_one_row(lite, db, gallery, tmp_path):
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    fresh = (gallery / "cat.jpg").read_bytes() + b"\0"  # bytes the index does not hold yet
    with TestClient(create_app(lite, copy)) as c:
        before = c.get("/v1/info").json()["index"]["count"]
        r = c.post("/v1/index", files=[("image", ("a.jpg", fresh, "image/jpeg")), ("image", ("b.jpg", fresh, "image/jpeg"))]).json()
        assert [a["upload"] for a in r["added"]] == ["a.jpg"] and r["count"] == before + 1
        assert r["skipped"][0]["upload"] == "b.jpg" and "already in the index" in r["skipped"][0]["reason"]
        assert r["skipped"][0]["id"] == r["added"][0]["id"]  # the id its first copy got
        again = c.post("/v1/index", files={"image": ("c.jpg", fresh, "image/jpeg")}).json()  # a retried add
        assert again["added"] == [] and again["skipped"][0]["id"] == r["added"][0]["id"] and again["count"] == before + 1
        indexed = c.post("/v1/index", files={"image": ("d.jpg", (gallery / "clock.jpg").read_bytes(), "image/jpeg")}).json()
        assert indexed["added"] == [] and indexed["count"] == before + 1  # the folder index holds it already
    assert len([p for p in (copy / "uploads").rglob("*") if p.is_file()]) == 1  # no file without a row
    import sqlite3  # the lookup by content uses an SQL index (made by every update), not a scan of every row

    plan = sqlite3.connect(copy / "meta.sqlite").execute("EXPLAIN QUERY PLAN SELECT id FROM images WHERE sha256 = 'x'")
    assert "images_sha256" in str(plan.fetchall())


def test_an_api_key_read_with_its_newline_still_authenticates(lite, db):
    with TestClient(create_app(lite, db, api_key="s3cret\n")) as c:  # a secret file's trailing newline
        assert c.get("/v1/info", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/v1/info", headers={"X-API-Key": "s3cre"}).status_code == 401
    with pytest.raises(Exception, match="blank"):
        create_app(lite, db, api_key=" \n")


def _form(field: str, value: bytes, image: bytes) -> dict:
    body = (f'--BB\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n'.encode() + value + b"\r\n"
            b'--BB\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n' + image + b"\r\n--BB--\r\n")
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=BB"}}


def test_form_text_that_is_not_utf8_is_refused_not_read_as_latin1(client_app, gallery):
    cat = (gallery / "cat.jpg").read_bytes()
    ok = client_app.post("/v1/classify", **_form("labels", "собака,кошка".encode(), cat))
    assert ok.status_code == 200 and {x["label"] for x in ok.json()["results"][0]["labels"]} == {"собака", "кошка"}
    bad = client_app.post("/v1/classify", **_form("labels", "собака,кошка".encode("cp1251"), cat))
    assert bad.status_code == 400 and "'labels' is not UTF-8" in bad.json()["error"]
    # a file part's bytes are not text: untouched
    assert client_app.post("/v1/search", files={"image": ("\u00e9.jpg", cat, "image/jpeg")}).status_code == 200


@pytest.fixture(scope="module")
def client_app(lite, db):
    with TestClient(create_app(lite, db)) as c:
        yield c


def test_a_photo_edited_in_place_gets_a_new_thumbnail_after_a_rebuild(lite, gallery, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat", "clock"):
        shutil.copy(gallery / f"{name}.jpg", folder / f"{name}.jpg")
    db = tmp_path / "db"
    ImageIndex(db).update(folder, lite, progress=False)
    with TestClient(create_app(lite, db)) as c:
        def first_hit():
            query = (folder / "cat.jpg").read_bytes()
            return c.post("/v1/search", files={"image": ("q.jpg", query, "image/jpeg")}, data={"k": "1"}).json()["hits"][0]

        before = first_hit()
        old = c.get(before["thumb"]).content
        Image.open(gallery / "coffee.jpg").save(folder / "cat.jpg")  # edited in place
        shutil.rmtree(db)
        ImageIndex(db).update(folder, lite, progress=False)  # rebuilt at the same place: same id, same path
        after = first_hit()
        assert after["id"] == before["id"] and after["thumb"] != before["thumb"]  # browsers load it again
        assert c.get(after["thumb"]).content != old  # and the server does not answer from its cache


def test_base64_wrapped_in_lines_is_read(client_app, gallery):
    cat = (gallery / "cat.jpg").read_bytes()
    r = client_app.post("/v1/embed", json={"image": base64.encodebytes(cat).decode()})  # 76-column lines
    assert r.status_code == 200
    assert client_app.post("/v1/embed", json={"image": "!!" + base64.b64encode(cat).decode()}).status_code == 400


class _SlowCaptioner:
    name, key, version = "slow", "slow@1", "1"

    def __init__(self, delay: float) -> None:
        self.delay, self.calls, self.lock = delay, [], threading.Lock()

    def caption(self, images, beam=3):
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(len(images))
        return [f"photo {beam}"] * len(images)


def _pngs(n: int) -> list:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, "PNG")
    return [("image", (f"{i}.png", out.getvalue(), "image/png")) for i in range(n)]


def test_caption_runs_in_chunks_that_let_other_requests_through(lite, db):
    slow = _SlowCaptioner(0.0)
    with TestClient(create_app(lite, db, caption_model=slow)) as c:
        r = c.post("/v1/caption", files=_pngs(40))
        assert r.status_code == 200 and len(r.json()["results"]) == 40 and slow.calls == [16, 16, 8]


def test_a_caption_request_past_the_timeout_stops_after_its_current_chunk(lite, db):
    slow = _SlowCaptioner(0.4)
    with TestClient(create_app(lite, db)) as c:  # warm-up under the default timeout: the worker's first text search
        assert c.post("/v1/search", json={"text": "a cat", "k": 1}).status_code == 200  # is slower; timed below
    app = create_app(lite, db, caption_model=slow, settings=ServeSettings(request_timeout_s=0.6))
    with TestClient(app) as c:
        r = c.post("/v1/caption", files=_pngs(64))
        assert r.status_code == 503
        time.sleep(1.5)  # what the model thread still does for it
        assert sum(slow.calls) <= 32, slow.calls  # not all 64: the abandoned request stopped
        start = time.monotonic()
        assert c.post("/v1/search", json={"text": "a cat", "k": 1}).status_code == 200
        assert time.monotonic() - start < 1.0
