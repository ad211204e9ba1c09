"""The HTTP service as a client generated from /openapi.json meets it (stop 48): every answer's status is documented
for its operation with the body it really has ({"error": "..."} for errors), and every 200 body matches its
documented schema. Before, each 200 was documented as `{}` and no error at all, and /v1/thumb documented a 422 body
({"detail": [...]}) the server never sends."""

import base64
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.serve import create_app  # noqa: E402

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
          "integer": int, "number": (int, float)}


def _check(value, schema: dict, spec: dict, where: str = "body") -> None:
    """A JSON value against the JSON schema subset /openapi.json uses ($ref, anyOf, type, required, properties,
    items, additionalProperties, enum): an AssertionError naming where it differs."""
    if "$ref" in schema:
        return _check(value, spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], spec, where)
    if "anyOf" in schema:
        fits = 0
        for option in schema["anyOf"]:
            try:
                _check(value, option, spec, where)
                fits += 1
            except AssertionError:
                pass
        assert fits, f"{where}: {value!r:.80} fits none of {schema['anyOf']}"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        ok = any(isinstance(value, _TYPES[k]) and not (k in ("integer", "number") and isinstance(value, bool))
                 for k in kinds)
        assert ok, f"{where}: {value!r:.80} is not {kinds}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        missing = set(schema.get("required", ())) - set(value)
        assert not missing, f"{where}: missing {sorted(missing)}"
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                _check(item, sub, spec, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], spec, f"{where}[{i}]")


def _as_documented(c, spec: dict, method: str, path: str, route: str | None = None, **kw):
    """Send a request; assert that its status is documented for the operation and its body matches the schema."""
    r = c.request(method, path, **kw)
    responses = spec["paths"][route or path][method.lower()]["responses"]
    assert str(r.status_code) in responses, (method, path, r.status_code, r.text[:200], sorted(responses))
    media = r.headers["content-type"].split(";")[0]
    content = responses[str(r.status_code)].get("content", {})
    assert media in content, (path, r.status_code, media, content)
    if media == "application/json":
        _check(r.json(), content[media]["schema"], spec, f"{method} {path} {r.status_code}")
    return r


class _Asker:
    name = key = "stub-vqa"

    def answer(self, image, question, choices=None):
        return {"answer": "yes", "score": 0.9, "alternatives": [("yes", 0.9), ("no", 0.1)]}


@pytest.fixture()
def served(lite, db, tmp_path):
    """A client over a private copy of the index (the tests add to and remove from it) and its /openapi.json."""
    path = tmp_path / "db"
    shutil.copytree(db, path)
    with TestClient(create_app(lite, path, vqa_model=_Asker()), base_url="http://localhost") as c:
        yield c, c.get("/openapi.json").json()


def test_every_reply_is_documented_with_the_body_it_has(served, gallery):
    c, spec = served
    cat = (gallery / "cat.jpg").read_bytes()
    image = base64.b64encode(cat).decode()
    ok = [
        ("GET", "/healthz", {}), ("GET", "/v1/info", {}),
        ("POST", "/v1/search", {"json": {"text": "a cat", "k": 3}}),
        ("POST", "/v1/search", {"files": {"image": ("cat.jpg", cat, "image/jpeg")}, "data": {"k": "2"}}),
        ("POST", "/v1/embed", {"json": {"texts": ["a cat", "a dog"]}}),
        ("POST", "/v1/classify", {"json": {"image": image, "labels": ["cat", "dog"]}}),
        ("POST", "/v1/vqa", {"json": {"image": image, "question": "is it a cat?"}}),
        ("POST", "/v1/index", {"json": {"remove": [1, 10**9]}}),
    ]
    for method, path, kw in ok:
        assert _as_documented(c, spec, method, path, **kw).status_code == 200, path
    flipped = bytes(cat[:-2]) + b"\x00\xff\xd9"  # other bytes, the same photo: added, not skipped as a duplicate
    r = _as_documented(c, spec, "POST", "/v1/index", files=[("image", ("new.jpg", flipped, "image/jpeg")),
                                                           ("image", ("again.jpg", cat, "image/jpeg"))])
    assert r.status_code == 200 and r.json()["added"] and r.json()["skipped"]
    thumb = _as_documented(c, spec, "GET", r.json()["added"][0]["thumb"].split("?")[0], "/v1/thumb/{image_id}")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"


def test_every_error_is_documented_as_the_error_object(served):
    c, spec = served
    mistakes = [
        ("POST", "/v1/search", None, {"json": {"text": "a cat", "k": 0}}, 400),
        ("POST", "/v1/search", None, {"content": b'{"text": "a"}', "headers": {"content-type": "text/plain"}}, 415),
        ("POST", "/v1/embed", None, {"json": {"texts": ["x" * 20_000]}}, 413),
        ("POST", "/v1/index", None, {"json": {"remove": []}}, 400),
        ("GET", "/v1/thumb/abc", "/v1/thumb/{image_id}", {}, 422),  # was documented as {"detail": [...]}
        ("GET", "/v1/thumb/99999", "/v1/thumb/{image_id}", {}, 404),
    ]
    for method, path, route, kw, status in mistakes:
        r = _as_documented(c, spec, method, path, route, **kw)
        assert r.status_code == status and r.json()["error"], (path, r.text)
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # a body this server never sends
    with TestClient(create_app(c.app.state.service.model, c.app.state.service.index.db),
                    base_url="http://localhost") as bare:  # no VQA model: /v1/vqa is a documented 404
        r = _as_documented(bare, spec, "POST", "/v1/vqa", json={"image": "", "question": "what?"})
        assert r.status_code == 404


def test_the_request_schemas_name_the_model_field_and_what_is_required(served):
    _, spec = served
    body = lambda path, media: spec["paths"][path]["post"]["requestBody"]["content"][media]["schema"]  # noqa: E731
    for path in ("/v1/embed", "/v1/search", "/v1/classify", "/v1/vqa", "/v1/index"):
        assert "model" in body(path, "application/json")["properties"], path  # accepted by each, was undocumented
    assert body("/v1/vqa", "application/json")["required"] == ["image", "question"]
    assert body("/v1/classify", "multipart/form-data")["required"] == ["image", "labels"]
    assert body("/v1/index", "application/json")["required"] == ["remove"]
    assert "required" not in body("/v1/search", "application/json")  # a text or an image: neither alone


def test_a_compressed_body_is_refused_by_name(served):
    # it was read as it came: "malformed JSON ('utf-8' codec can't decode byte 0x8b ...)", or "multipart body rejected"
    import gzip

    c, spec = served
    for kind, body in (("application/json", b'{"text": "a cat"}'),
                       ("multipart/form-data; boundary=b",
                        b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\na cat\r\n--b--\r\n')):
        r = _as_documented(c, spec, "POST", "/v1/search", content=gzip.compress(body),
                           headers={"content-type": kind, "content-encoding": "gzip"})
        assert r.status_code == 415 and r.json()["error"] == ("Content-Encoding 'gzip' is not supported; send the "
                                                              "body uncompressed"), r.text
        r = c.post("/v1/search", content=body, headers={"content-type": kind, "content-encoding": "identity"})
        assert r.status_code == 200, r.text


def test_an_empty_images_list_is_named_as_sent(served):
    # /v1/caption's field is "images": '{"images": []}' was answered 'no image: send {"image": ...}'
    c, _ = served
    r = c.post("/v1/classify", json={"images": [], "labels": ["cat", "dog"]})
    assert r.status_code == 400 and r.json()["error"].startswith('"images" is empty: send'), r.text
    r = c.post("/v1/classify", json={"labels": ["cat", "dog"]})
    assert r.status_code == 400 and r.json()["error"].startswith("no image: send"), r.text
