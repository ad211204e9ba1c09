"""Serve (s41): a request past --timeout, or whose client went away, stops decoding its images; a client that hangs
up is counted as 499 in /metrics, not as a server error."""

import asyncio
import io
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.serve import ServeSettings, create_app  # noqa: E402

N_IMAGES, PER_IMAGE_S = 30, 0.1  # 3 s of decoding in all, if nothing stops it


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(out, "PNG")
    return out.getvalue()


def _slow_prepare(app) -> list:
    """Makes each image the service prepares take PER_IMAGE_S; returns the list its images are counted in."""
    svc, done = app.state.service, []
    real = svc.prepare

    def slow(items):
        for _ in items:
            time.sleep(PER_IMAGE_S)
            done.append(1)
        return real(items)

    svc.prepare = slow
    return done


def _files():
    return [("image", (f"{i}.png", _png(), "image/png")) for i in range(N_IMAGES)]


def test_a_request_past_the_timeout_stops_decoding_its_images(lite, db):
    """Its images were prepared in one thread job: the 503 came at --timeout, and the thread went on decoding every
    image left (64 at-limit PNGs: ~90 s of a core after the 503)."""
    app = create_app(lite, db, settings=ServeSettings(request_timeout_s=0.5))
    done = _slow_prepare(app)
    with TestClient(app) as c:
        r = c.post("/v1/embed", files=_files())
        assert r.status_code == 503, r.text
        at_answer = len(done)
        time.sleep(1.0)
        assert len(done) <= at_answer + 1 < N_IMAGES  # the image being decoded at most, then nothing


async def _asgi(app, scope: dict, messages: list, then_disconnect_after: float) -> list:
    """Runs one request through the ASGI app: `messages` as the request body, then a disconnect after a while."""
    sent, queue = [], list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        await asyncio.sleep(then_disconnect_after)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _scope(request: httpx.Request) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "scheme": "http", "path": request.url.path, "raw_path": request.url.raw_path, "query_string": b"",
            "root_path": "", "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}


def test_a_client_that_goes_away_stops_its_request_and_counts_as_499(lite, db):
    """Nothing watched for the disconnect: the request decoded and embedded to the end (or to --timeout, and then
    on), answering no one; a client that hung up mid-body was counted as status 500."""
    app = create_app(lite, db)
    done, metrics = _slow_prepare(app), app.state.service.metrics
    request = httpx.Request("POST", "http://localhost/v1/embed", files=_files())
    body = request.read()
    scope = _scope(request)

    def run():
        asyncio.run(_asgi(app, scope, [{"type": "http.request", "body": body, "more_body": False}], 0.3))

    start = time.monotonic()
    thread = threading.Thread(target=run)  # (its own event loop, as the TestClient's)
    thread.start()
    thread.join(10)
    took = time.monotonic() - start
    assert not thread.is_alive()
    # stopped after the image being decoded (counted, not timed: a loaded machine slows the rest, not the sleeps)
    assert len(done) <= N_IMAGES // 3, (took, len(done))
    time.sleep(0.3)
    assert len(done) < N_IMAGES

    half = [{"type": "http.request", "body": body[:100], "more_body": True}]  # hung up mid-body
    asyncio.run(_asgi(app, scope, half, 0.0))
    text = metrics.render()
    assert 'polymodal_requests_total{endpoint="/v1/embed",method="POST",status="499"} 2' in text, text
    assert 'status="500"' not in text


def test_answers_are_still_sent_and_counted_once_the_client_waits(lite, db):
    """The disconnect watch must not cut off a client that stays: the server also reports a disconnect once the
    answer is out."""
    app = create_app(lite, db)
    with TestClient(app) as c:
        for _ in range(3):
            r = c.post("/v1/embed", json={"texts": ["a cat"]})
            assert r.status_code == 200 and len(r.json()["vectors"]) == 1
        metrics = c.get("/metrics").text
    assert 'polymodal_requests_total{endpoint="/v1/embed",method="POST",status="200"} 3' in metrics
    assert 'status="499"' not in metrics
