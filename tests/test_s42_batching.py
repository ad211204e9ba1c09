"""MicroBatcher under mixed traffic: image and text requests arriving interleaved are still merged (each kind in its
own pass, each request its own rows), and a text batch does not wait for image requests still being decoded."""

import threading
import time

import numpy as np
import pytest

from polymodal.serve.batching import MicroBatcher
from test_batching import _KeyedModel, _queued_behind_a_busy_worker


def test_interleaved_image_and_text_requests_are_still_merged():
    # a web page's text searches between image uploads: the queue alternates kinds. Each batch stopped at the first
    # job of the other kind, so every forward pass held one request (mean batch 1.1 at concurrency 16, vs 6.4 now)
    model = _KeyedModel()
    batcher = MicroBatcher(model, max_batch=8, max_wait_ms=0)
    try:
        items = ["a", "b", "c", "d", "e", "f", "g", "h"]  # even: images, odd: texts
        kinds = ["image" if i % 2 == 0 else "text" for i in range(len(items))]

        def submit():
            return [batcher.submit_images([x]) if k == "image" else batcher.submit_texts([x])
                    for x, k in zip(items, kinds)]

        futures = _queued_behind_a_busy_worker(batcher, submit)
        results = [f.result(10) for f in futures]
        assert model.passes == [("image", ["a", "c", "e", "g"]), ("text", ["b", "d", "f", "h"])]
        for x, rows in zip(items, results):  # every request its own row
            assert rows.shape == (1, 26) and rows.argmax() == ord(x) - ord("a")
    finally:
        batcher.close()


def test_calls_and_max_batch_keep_their_order_among_set_aside_jobs():
    model = _KeyedModel()
    batcher = MicroBatcher(model, max_batch=2, max_wait_ms=0)
    order = []
    try:
        def submit():
            return [batcher.submit_texts(["a"]), batcher.submit_call(order.append, "call"), batcher.submit_images(["b"]),
                    batcher.submit_texts(["c"]), batcher.submit_texts(["d"]), batcher.submit_images(["e"])]

        futures = _queued_behind_a_busy_worker(batcher, submit)
        for f in futures:
            f.result(10)
        # text a+c fill the first pass (max_batch 2); then the call, images b+e, text d: oldest first each time
        assert model.passes == [("text", ["a", "c"]), ("image", ["b", "e"]), ("text", ["d"])]
        assert order == ["call"]
        assert [f.result(10).argmax() for i, f in enumerate(futures) if i != 1] == [0, 1, 2, 3, 4]
    finally:
        batcher.close()


def test_a_text_batch_does_not_wait_for_an_image_being_decoded():
    # incoming() counts image requests being decoded; a text batch waited up to max_wait_ms for them although they
    # can never join it (3 s here; 5 ms by default, on every text batch while images arrive)
    model = _KeyedModel()
    batcher = MicroBatcher(model, max_batch=8, max_wait_ms=3000)
    entered, release = threading.Event(), threading.Event()

    def decoding_image():
        with batcher.incoming("image"):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=decoding_image)
    t.start()
    try:
        assert entered.wait(5)
        start = time.monotonic()
        rows = batcher.submit_texts(["t"]).result(10)
        assert time.monotonic() - start < 1.5, "the text request waited for an image request to join its batch"
        assert rows.argmax() == ord("t") - ord("a")
    finally:
        release.set()
        t.join(5)
        batcher.close()


def test_embed_texts_past_the_timeout_stop_after_their_current_chunk(lite, db, monkeypatch):
    # 256 texts of 10,000 characters (within the limits) were one model job: ~40 s on 2 cores, answered 503 at
    # --timeout while the model thread went on to the end, and every other request got 503 meanwhile
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import ServeSettings, create_app

    encoded, real = [], lite.encode_text

    def slow(texts, batch_size=None):
        time.sleep(0.005 * len(texts))  # a long text's share of the forward pass
        encoded.extend(texts)
        return real(texts, batch_size=batch_size)

    texts = [f"text number {i}" for i in range(256)]
    with TestClient(create_app(lite, db)) as c:  # (the default timeout: a loaded machine may take 0.3 s for these)
        r = c.post("/v1/embed", json={"texts": texts[:40]})
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["vectors"], real(texts[:40]), atol=1e-5)  # chunked: the same vectors
    app = create_app(lite, db, settings=ServeSettings(request_timeout_s=0.3))
    with TestClient(app) as c:
        # in the instance's dict, so that undoing it removes it: setattr's undo would leave the bound method there,
        # shadowing the class's encode_text for later tests that patch the class (test_text_search)
        monkeypatch.setitem(vars(lite), "encode_text", slow)
        r = c.post("/v1/embed", json={"texts": texts})
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        time.sleep(1.5)  # all 256 would be done by now (1.3 s) if they were still running
        assert len(encoded) < len(texts)
