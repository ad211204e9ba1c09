"""Serve under load (s46): the batch metrics count the forward passes the model really ran: an image request over
--max-batch is several passes (it was counted as one of all its images), and /v1/index adds count too (kind "index";
they were left out)."""

import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from polymodal.serve.batching import BatchedModel, MicroBatcher
from test_batching import _KeyedModel, _queued_behind_a_busy_worker


def _recording_batcher(model, max_batch):
    seen = []
    batcher = MicroBatcher(model, max_batch=max_batch, max_wait_ms=0, on_batch=lambda *a: seen.append(a))
    return batcher, seen


def test_an_image_request_over_max_batch_is_counted_pass_by_pass():
    model = _KeyedModel()
    batcher, seen = _recording_batcher(model, max_batch=4)
    try:
        rows = batcher.submit_images(list("abcdefghij")).result(10)  # one request, 10 images
        assert [rows.argmax(1).tolist()] == [list(range(10))]  # its own rows, in order
        assert [len(items) for _, items in model.passes] == [4, 4, 2]  # at most max_batch images a pass
        assert seen == [("image", 4, 1), ("image", 4, 1), ("image", 2, 1)]  # was [("image", 10, 1)]
        assert batcher.forward_calls == 3
    finally:
        batcher.close()


def test_merged_requests_still_count_as_one_pass_and_texts_keep_their_chunk():
    model = _KeyedModel()
    batcher, seen = _recording_batcher(model, max_batch=4)
    try:
        futures = _queued_behind_a_busy_worker(batcher, lambda: [batcher.submit_images(["a", "b", "c"]),
                                                                 batcher.submit_images(["d"])])
        assert [f.result(10).argmax(1).tolist() for f in futures] == [[0, 1, 2], [3]]
        assert seen == [("image", 4, 2)]
        seen.clear()
        batcher.submit_texts(list("abcdef")).result(10)  # the app cuts texts in chunks of its own: one pass each
        assert seen == [("text", 6, 1)]
    finally:
        batcher.close()


class _IndexModel(_KeyedModel):
    name = key = "keyed"
    version, dim = "1", 26


def test_index_adds_are_counted_as_kind_index():
    model = _IndexModel()
    batcher, seen = _recording_batcher(model, max_batch=8)
    try:
        vectors = BatchedModel(model, batcher).encode_image(list("abcdefg"), batch_size=3)
        assert vectors.shape == (7, 26)
        assert seen == [("index", 3, 1), ("index", 3, 1), ("index", 1, 1)]  # was nothing
    finally:
        batcher.close()


def _png(i: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _batch_stats(text: str, kind: str) -> tuple[float, float]:
    found = [re.search(rf'^polymodal_batch_size_{s}{{kind="{kind}"}} (\S+)$', text, re.M) for s in ("sum", "count")]
    return tuple(float(m.group(1)) if m else 0.0 for m in found)


def test_metrics_of_a_large_embed_request_and_an_index_add(lite, db, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import ServeSettings, create_app

    own = tmp_path / "db"
    shutil.copytree(db, own)
    app = create_app(lite, own, settings=ServeSettings(max_batch=8))
    with TestClient(app, base_url="http://localhost") as c:
        r = c.post("/v1/embed", files=[("image", (f"{i}.png", _png(i), "image/png")) for i in range(20)])
        assert r.status_code == 200 and len(r.json()["vectors"]) == 20
        text = c.get("/metrics").text
        assert _batch_stats(text, "image") == (20.0, 3.0)  # passes of 8, 8 and 4 (was one pass of 20)
        assert 'polymodal_batch_size_bucket{kind="image",le="8"} 3' in text
        r = c.post("/v1/index", files=[("image", (f"n{i}.png", _png(100 + i), "image/png")) for i in range(3)])
        assert r.status_code == 200 and len(r.json()["added"]) == 3
        assert _batch_stats(c.get("/metrics").text, "index") == (3.0, 1.0)  # the add's pass (was left out)


def test_an_update_that_waited_too_long_says_it_waited_for_the_queue(lite, db, tmp_path):
    # 32 single-image uploads at once to a 100k-image index: each update holds the writer about a second, and the
    # last one was told "another index update has been running for over 30 s", though none ran over 1.5 s
    from polymodal.serve import ServeSettings
    from polymodal.serve.limits import ApiError
    from polymodal.serve.service import Service

    own = tmp_path / "db"
    shutil.copytree(db, own)
    svc = Service(lite, own, ServeSettings(request_timeout_s=0.05))
    with svc._write_lock:  # the updates ahead of it
        with pytest.raises(ApiError) as caught:
            svc.add_images([("a.png", _png(1))])
    assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "5"}
    assert "waited over 0.05 s for the updates ahead of it" in caught.value.message
    assert "has been running" not in caught.value.message
