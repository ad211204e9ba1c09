"""Stop 52, eval --page and the HTTP API's nulls: a row of scores holding NaN or inf (a broken model) ranks the true
photo last, and its top hits now say so too (the page showed it as hit 1, green, beside "rank 1000"); a page reads
Parquet photos a row group at a time and inlines each distinct photo once; and JSON null is "not sent" in every
optional field of the API ("k": null and "image": null were 400s), as /openapi.json now says."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from polymodal.eval.image_retrieval import image_retrieval_metrics
from polymodal.eval.page import write_page
from polymodal.eval.retrieval import retrieval_metrics


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_a_row_with_nan_ranks_its_photo_last_and_its_top_hits_leave_it_out():
    images = _unit(np.eye(6)[:, :6] + 0.01)
    images[5] = np.nan  # one photo the model could not embed: every caption's row holds its NaN
    texts = images.copy()
    texts[4] = np.nan  # and a caption whose own vector is NaN: a row of NaN only
    ranks: dict = {}
    retrieval_metrics(images, texts, np.arange(6), ranks=ranks, top=3)
    assert ranks["t2i"].tolist() == [6] * 6  # last, as before
    for caption, top in enumerate(ranks["t2i_top"]):
        assert caption not in top.tolist(), (caption, top)  # was hit 1 (captions 0-3)
    assert 5 not in ranks["t2i_top"][0].tolist()  # the NaN photo after the finite ones


def test_finite_rows_keep_their_top_hits_ties_after_the_others():
    sim_images = _unit(np.array([[1, 0], [1, 0], [0, 1]], float))
    ranks: dict = {}
    retrieval_metrics(sim_images, sim_images[[1, 2, 0]], np.array([1, 2, 0]), ranks=ranks, top=3)
    # a tie: the true photo after the one it ties with, wherever its column
    assert ranks["t2i_top"].tolist() == [[0, 1, 2], [2, 0, 1], [1, 0, 2]]


def test_eval_images_a_query_that_ranks_last_shows_other_labels_first():
    rng = np.random.default_rng(0)
    labels = [c for c in range(3) for _ in range(4)]
    emb = _unit(np.eye(3)[labels] + 0.05 * rng.normal(size=(12, 3)))
    emb[11] = np.nan
    details: dict = {}
    image_retrieval_metrics(emb, [str(x) for x in labels], details=details)
    for i in range(11):
        assert details["rank"][i] == 12
        assert all(labels[j] != labels[i] for j in details["top"][i]), (i, details["top"][i])  # its label was first
        assert labels[details["nearest"][i]] != labels[i] and i not in details["top"][i]


def _png(path, colour) -> str:
    Image.new("RGB", (60, 40), colour).save(path)
    return str(path)


def test_a_photo_on_a_page_several_times_is_inlined_once(tmp_path):
    a, b, c = (_png(tmp_path / f"{n}.png", colour) for n, colour in (("a", (200, 0, 0)), ("b", (0, 200, 0)),
                                                                      ("c", (0, 0, 200))))
    items = [{"query": "text", "caption": "one", "image": a, "rank": 3, "top": [b, c, a]},
             {"query": "text", "caption": "two", "image": a, "rank": 2, "top": [b, a, c]},
             {"query": "text", "caption": "three", "image": b, "rank": 1, "top": [b, c, a]},
             {"query": "text", "caption": "gone", "image": str(tmp_path / "gone.png"), "rank": 2, "top": [b]}]
    write_page(tmp_path / "p.html", "retrieval", {"model": "m"}, items)
    text = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert text.count("data:image/jpeg;base64,") == 3  # 14 places, 3 readable photos: each once
    pictures = dict(re.findall(r"\.(p\d+)\{background-image:url\(data:image/jpeg;base64,([^)]+)\)\}", text))
    placed = re.findall(r"<figure class='(\w*)' title='([^']*)'><div class='img (p\d+)' role='img'", text)
    assert len(placed) == 13 and {name for _, name, _ in placed} == {a, b, c}
    for mark, name, picture in placed:  # each place names its own photo's picture
        colour = Image.open(io.BytesIO(base64.b64decode(pictures[picture]))).convert("RGB").getpixel((5, 5))
        assert max(colour) == colour[{a: 0, b: 1, c: 2}[name]] > 150, (name, colour)
    assert text.count("file not found here") == 1  # a photo that is gone says why, in its place


def test_parquet_photos_are_read_a_row_group_at_a_time_in_the_pages_order(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    def jpeg(i):
        out = io.BytesIO()
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(out, "JPEG")
        return out.getvalue()

    path = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"image": [{"bytes": jpeg(i), "path": f"{i}.jpg"} for i in range(6)],
                             "label": [str(i) for i in range(6)]}), path, row_group_size=2)
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, **kw: reads.append(g) or real(self, g, **kw))
    rows = [0, 4, 1, 5, 2]  # worst first: groups 0, 2, 0, 2, 1 in the page's order
    items = [{"image": f"{path}#{r}", "label": "x", "predicted": "y", "rank": 9 - n} for n, r in enumerate(rows)]
    write_page(tmp_path / "p.html", "zeroshot", {"model": "m"}, items)
    assert sorted(reads) == [0, 1, 2]  # each row group once (was 5 reads)
    text = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert re.findall(r"title='[^']*#(\d)'", text) == [str(r) for r in rows]  # the page keeps its order


# -- the HTTP API: null is "not sent" --------------------------------------------------------------------------------
pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from test_s48_httpapi import served  # noqa: E402,F401 - a fixture: a client over a private copy of the index
from test_s51_apifuzz import _body_schema, _fits  # noqa: E402


def test_null_in_an_optional_json_field_is_not_sent_and_the_schema_says_so(served, gallery):
    c, spec = served
    image = base64.b64encode((gallery / "cat.jpg").read_bytes()).decode()
    accepted = [
        ("/v1/search", {"text": "a cat", "k": None}),  # was 400 "k must be a whole number, got NoneType"
        ("/v1/search", {"text": "a cat", "image": None, "like": None, "model": None}),  # image: was 400
        ("/v1/search", {"image": image, "text": None}),
        ("/v1/embed", {"texts": ["a cat"], "image": None, "images": None}),  # was 400 "either texts or images"
        ("/v1/embed", {"image": image, "texts": None}),
        ("/v1/classify", {"images": [image], "image": None, "labels": ["cat", "dog"], "top_k": None,
                          "templates": None}),
        ("/v1/vqa", {"image": image, "question": "is it a cat?", "choices": None}),
    ]
    for path, body in accepted:
        assert _fits(body, _body_schema(spec, path)), (path, body)
        r = c.post(path, json=body)
        assert r.status_code == 200, (path, body, r.text)
    assert c.post("/v1/search", json={"text": "a cat", "k": None}).json()["k"] == 10  # the default
    refused = [  # a required field's null is a missing field: its own message, and the schema rules it out
        ("/v1/vqa", {"image": None, "question": "is it?"}, "no image"),
        ("/v1/classify", {"image": image, "labels": None}, "no labels"),
        ("/v1/index", {"remove": None}, 'send {"remove": [ids]}'),
        ("/v1/search", {"text": "a cat", "nope": None}, "unknown field(s) 'nope'"),
    ]
    for path, body, said in refused:
        assert not _fits(body, _body_schema(spec, path)), (path, body)
        r = c.post(path, json=body)
        assert r.status_code == 400 and said in r.json()["error"], (path, body, r.text)
    # texts or images: an either/or pair the schema cannot require (as {} fits it); null is neither
    r = c.post("/v1/embed", json={"texts": None, "images": None})
    assert r.status_code == 400 and "nothing to embed" in r.json()["error"]
    k = _body_schema(spec, "/v1/search")["properties"]["k"]
    assert k["default"] == 10 and {"type": "null"} in k["anyOf"]
    assert "null" not in json.dumps(_body_schema(spec, "/v1/search", "multipart/form-data"))  # a form has no null
