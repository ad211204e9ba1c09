"""/openapi.json against the server, as schemathesis found them apart (stop 51): /v1/search's "like" answered a 404
and a 422 its operation did not document; with --api-key the schema put /healthz under the key it never asks for;
and the request schemas allowed what every handler refuses (another model's name or "" in `model`, a blank
question, empty lists, k 0, unknown fields, a thumbnail id that is no row id), so a client generated from them
sent requests that could only fail. Plain requests here; schemathesis is no dependency."""

import re

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.serve import create_app  # noqa: E402
from test_s48_httpapi import _as_documented, served  # noqa: E402,F401 - served is a fixture

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
          "integer": int, "number": (int, float)}


def _fits(value, schema: dict) -> bool:
    """Whether a JSON value fits a request schema: the keywords these schemas use (type, enum, anyOf, properties,
    required, additionalProperties, items, minItems, maxItems, minLength, pattern, minimum, maximum)."""
    if "anyOf" in schema and not any(_fits(value, option) for option in schema["anyOf"]):
        return False
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(isinstance(value, _TYPES[k]) and not (isinstance(value, bool) and k in ("integer", "number"))
                   for k in kinds):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if set(schema.get("required", ())) - set(value):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return False
        return all(_fits(v, props[k]) for k, v in value.items() if k in props)
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        return all(_fits(v, schema.get("items", {})) for v in value)
    if isinstance(value, str):
        return len(value) >= schema.get("minLength", 0) and re.search(schema.get("pattern", ""), value) is not None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return schema.get("minimum", value) <= value <= schema.get("maximum", value)
    return True


def _body_schema(spec: dict, path: str, media: str = "application/json") -> dict:
    return spec["paths"][path]["post"]["requestBody"]["content"][media]["schema"]


def test_a_like_search_that_misses_answers_as_documented(served):
    c, spec = served
    for body, status in (({"like": 987654}, 404), ({"like": "abc"}, 422)):
        r = _as_documented(c, spec, "POST", "/v1/search", json=body)  # asserts the status is documented
        assert r.status_code == status and r.json()["error"], r.text


def test_with_a_key_healthz_is_documented_as_open(lite, db):
    with TestClient(create_app(lite, db, api_key="s3cret")) as c:
        spec = c.get("/openapi.json").json()
        assert spec["security"] == [{"ApiKey": []}, {"Bearer": []}]
        assert spec["paths"]["/healthz"]["get"]["security"] == []  # no key needed, as the server answers
        assert c.get("/healthz").status_code == 200
        assert "security" not in spec["paths"]["/v1/info"]["get"]  # the rest: the key, as before
        assert c.get("/v1/info").status_code == 401


def test_what_the_schema_allows_is_answered_and_what_it_rules_out_is_refused(served, gallery):
    c, spec = served
    key = c.app.state.service.model.key
    first = c.post("/v1/search", json={"text": "a cat", "k": 1}).json()["hits"][0]["id"]
    image = __import__("base64").b64encode((gallery / "cat.jpg").read_bytes()).decode()
    accepted = [
        ("/v1/embed", {"texts": ["a cat"], "model": "lite"}),
        ("/v1/embed", {"texts": ["a cat"], "model": key}),
        ("/v1/search", {"text": "a cat", "k": 1000}),
        ("/v1/search", {"like": str(first), "k": 1}),
        ("/v1/classify", {"image": image, "labels": ["cat", "dog"], "top_k": 1, "templates": ["a {}."]}),
        ("/v1/vqa", {"image": image, "question": "is it a cat?", "choices": ["yes", 2], "model": "stub-vqa"}),
        ("/v1/index", {"remove": [10**9]}),
    ]
    for path, body in accepted:
        assert _fits(body, _body_schema(spec, path)), (path, body)
        assert c.post(path, json=body).status_code == 200, (path, body)
    refused = [  # each was allowed by the schema before
        ("/v1/embed", {"texts": ["a cat"], "model": ""}),
        ("/v1/embed", {"texts": ["a cat"], "model": "stub-vqa"}),  # the VQA model's name, on an embedding endpoint
        ("/v1/embed", {"texts": []}),
        ("/v1/embed", {"images": []}),
        ("/v1/embed", {"texts": ["a cat"], "text": "a cat"}),  # an unknown field
        ("/v1/search", {"text": " ", "k": 3}),
        ("/v1/search", {"text": "a cat", "k": 0}),
        ("/v1/search", {"text": "a cat", "k": 1001}),
        ("/v1/search", {"image": ""}),
        ("/v1/classify", {"image": image, "labels": []}),
        ("/v1/classify", {"image": image, "labels": ["cat", ""]}),
        ("/v1/classify", {"image": image, "labels": ["cat", "dog"], "top_k": 0}),
        ("/v1/classify", {"image": image, "labels": ["cat", "dog"], "templates": ["a photo"]}),
        ("/v1/vqa", {"image": image, "question": ""}),
        ("/v1/vqa", {"image": image, "question": "is it?", "choices": []}),
        ("/v1/vqa", {"image": image, "question": "is it?", "choices": " , "}),
        ("/v1/vqa", {"image": image, "question": "is it?", "model": "lite"}),
        ("/v1/index", {"remove": []}),
    ]
    for path, body in refused:
        assert not _fits(body, _body_schema(spec, path)), (path, body)
        assert c.post(path, json=body).status_code == 400, (path, body)
    form = [  # multipart: a blank question, labels that are only commas, another model
        ("/v1/vqa", {"question": ""}), ("/v1/classify", {"labels": ",,"}), ("/v1/search", {"model": "nope"}),
    ]
    for path, fields in form:
        schema = _body_schema(spec, path, "multipart/form-data")
        assert not all(_fits(v, schema["properties"][k]) for k, v in fields.items()), (path, fields)
        r = c.post(path, data=fields, files={"image": ("cat.jpg", (gallery / "cat.jpg").read_bytes(), "image/jpeg")})
        assert r.status_code == 400, (path, r.text)


def test_a_thumbnail_id_is_documented_as_the_server_reads_it(served):
    c, spec = served
    (param,) = [p for p in spec["paths"]["/v1/thumb/{image_id}"]["get"]["parameters"] if p.get("in") == "path"]
    first = c.post("/v1/search", json={"text": "a cat", "k": 1}).json()["hits"][0]["id"]
    for image_id, status in (("abc", 422), ("1e3", 422), (" 1", 422), ("99999", 404), (str(first), 200)):
        assert _fits(image_id, param["schema"]) == (status != 422), image_id  # documented: never a 422
        assert c.get(f"/v1/thumb/{image_id}").status_code == status, image_id
