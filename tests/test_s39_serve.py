"""Serve (s39): /v1/classify encodes many labels in chunks, one model job each."""

import base64

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.serve import create_app  # noqa: E402


def test_classify_encodes_many_labels_in_chunks_with_the_same_scores(lite, db, gallery, monkeypatch):
    real, jobs = lite.label_embeddings, []

    def counting(labels, templates=None, progress=False):
        jobs.append(len(labels))
        return real(labels, templates, progress)

    monkeypatch.setattr(lite, "label_embeddings", counting, raising=False)
    labels, templates = [f"thing number {i}" for i in range(300)], ["a photo of a {}.", "a picture of a {}."]
    cat = (gallery / "cat.jpg").read_bytes()
    with TestClient(create_app(lite, db)) as c:
        r = c.post("/v1/classify", json={"image": base64.b64encode(cat).decode(), "labels": labels,
                                         "templates": templates, "top_k": 5})
    assert r.status_code == 200, r.text
    assert jobs == [128, 128, 44]  # 256 prompts per model job: other requests run between them
    jobs.clear()
    expected = lite.classify([Image.open(gallery / "cat.jpg")], labels, templates, top_k=5)[0]
    got = r.json()["results"][0]["labels"]
    assert [x["label"] for x in got] == [label for label, _ in expected]
    assert np.allclose([x["score"] for x in got], [p for _, p in expected], atol=1e-5)
