"""Serve (s42): multipart fields sent twice, a file where text belongs, and labels sent one field each past the
limit each get one clear error."""

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


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(out, "PNG")
    return out.getvalue()


def test_a_single_valued_field_sent_twice_is_refused(client):
    """`text=a&text=b` searched for b without a word (Starlette keeps the last value)."""
    r = client.post("/v1/search", files=[("text", (None, "a cat")), ("text", (None, "a rocket"))])
    assert r.status_code == 400 and r.json()["error"] == "form field 'text' was sent 2 times; send it once"
    r = client.post("/v1/search", files=[("text", (None, "a cat")), ("k", (None, "1"))])
    assert r.status_code == 200 and len(r.json()["hits"]) == 1


def test_a_file_in_the_templates_field_is_named_not_shown_as_an_object(client):
    r = client.post("/v1/classify", files=[("image", ("a.png", _png(), "image/png")), ("labels", (None, "cat,dog")),
                                           ("templates", ("t.txt", b"a photo of a {}", "text/plain"))])
    assert r.status_code == 400 and r.json()["error"] == "form field 'templates' must be text, not a file"


def test_labels_sent_one_field_each_past_the_limit_are_a_413(client):
    """1,001+ labels are a 413 in one field or in JSON; sent as 1,017+ fields, Starlette's parser stopped them
    first with a 400 "Too many fields"."""
    files = [("image", ("a.png", _png(), "image/png"))] + [("labels", (None, f"label {i}")) for i in range(1100)]
    r = client.post("/v1/classify", files=files)
    assert r.status_code == 413 and "send labels comma-separated in one field" in r.json()["error"]
    one_field = ",".join(f"label {i}" for i in range(1001))
    r = client.post("/v1/classify", files=[("image", ("a.png", _png(), "image/png")), ("labels", (None, one_field))])
    assert r.status_code == 413


def test_templates_are_taken_as_the_python_api_takes_them(client):
    """/v1/classify refused a template with two '{}' or other braces, which `classify` and `model.classify` take
    (every '{}' filled by replacement, other braces kept as text)."""
    image = ("image", ("a.png", _png(), "image/png"))
    for template in ("a {} next to another {}", "a photo of a {} {in braces}"):
        r = client.post("/v1/classify", files=[image, ("labels", (None, "cat,dog")), ("templates", (None, template))])
        assert r.status_code == 200, r.text
    r = client.post("/v1/classify", files=[image, ("labels", (None, "cat,dog")), ("templates", (None, "a {x}"))])
    assert r.status_code == 400 and "with a '{}' where the label goes" in r.json()["error"]
