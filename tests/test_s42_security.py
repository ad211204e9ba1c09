"""Serve (s42, security): another site's page cannot write to a server without a key (cross-site form POSTs are
simple requests, sent without a CORS preflight), and a JSON key sent twice is refused as a form field is."""

import io

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(lite, db):
    with TestClient(create_app(lite, db)) as c:
        yield c


def _png(colour=(10, 200, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "PNG")
    return out.getvalue()


def test_a_cross_site_form_post_cannot_add_to_the_index(client):
    """A page on evil.example could POST a multipart form to http://127.0.0.1:8000/v1/index (no preflight for
    multipart/form-data) and the images were added, to a server without --api-key, the loopback default."""
    before = client.get("/v1/info").json()["index"]["count"]
    evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    r = client.post("/v1/index", headers=evil, files=[("image", ("x.png", _png(), "image/png"))])
    assert r.status_code == 403 and "cross-site request refused" in r.json()["error"]
    assert client.get("/v1/info").json()["index"]["count"] == before
    # the page's own requests (same-origin), curl (no header) and cross-site reads (an <img> of a thumbnail) pass
    r = client.post("/v1/search", headers={"Sec-Fetch-Site": "same-origin"}, json={"text": "a cat", "k": 1})
    assert r.status_code == 200
    assert client.post("/v1/search", json={"text": "a cat", "k": 1}).status_code == 200
    hit = r.json()["hits"][0]
    assert client.get(hit["thumb"], headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_a_json_key_sent_twice_is_refused(client):
    """{"k": 1, "k": 500} searched with k=500 (json.loads keeps the last), where a form field sent twice is a 400."""
    r = client.post("/v1/search", content=b'{"text": "a cat", "k": 1, "k": 500}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and "key 'k' appears twice" in r.json()["error"]
    r = client.post("/v1/search", content=b'{"text": "a cat", "k": 2}', headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2
