"""Stop 52, an operator's view of `polymodal serve`: (1) on a server with --api-key, Prometheus could not scrape
/metrics: its scrape config sends a key only as `Authorization: Bearer KEY` (`authorization: credentials`; the
arbitrary headers of `http_headers` came in Prometheus 2.55: Debian 12's 2.42 refuses the field), which was a 401;
(2) every 500's traceback was logged twice, ours naming the request, then uvicorn's "Exception in ASGI application"
(Starlette re-raises each error it answered, for the server to log). Seconds on a CPU, with a fake model."""

import json
import logging
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import create_app  # noqa: E402
from test_index import FakeModel, paint  # noqa: E402


def _app(tmp_path, **kw):
    w = tmp_path.resolve()
    paint(w / "photos" / "red.png", "red")
    model = FakeModel()
    ImageIndex(w / "db").update_folders([w / "photos"], model, progress=False)
    return create_app(model, w / "db", **kw)


def test_prometheus_scrapes_metrics_with_the_key_as_a_bearer_token(tmp_path):
    with TestClient(_app(tmp_path, api_key="s3cret"), base_url="http://localhost") as c:
        scrape = c.get("/metrics", headers={"Authorization": "Bearer s3cret"})  # what Prometheus sends
        assert scrape.status_code == 200, scrape.text  # was 401 "missing API key"
        assert scrape.text.startswith("# HELP polymodal_requests_total")
        assert c.post("/v1/search", json={"text": "red"}, headers={"authorization": "bearer s3cret"}).status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200  # as before
        wrong = c.get("/metrics", headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "wrong API key in the Authorization header"
        for other in ({"Authorization": "Basic czNjcmV0"}, {}):  # a proxy's Basic auth is not the key
            missing = c.get("/metrics", headers=other)
            assert missing.status_code == 401 and "Authorization: Bearer KEY" in missing.json()["error"]


def test_a_500_is_logged_once_with_its_request_under_uvicorn(tmp_path, caplog):
    uvicorn = pytest.importorskip("uvicorn")
    app = _app(tmp_path)

    def broken(image_id):
        raise RuntimeError("a bug")

    app.state.service.thumbnail = broken
    # log_config=None: uvicorn's records reach the root logger (caplog) rather than its own stderr handler
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        with caplog.at_level(logging.ERROR):
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/thumb/1", timeout=30)
            assert answer.value.code == 500
            rid = answer.value.headers["X-Request-ID"]  # s52 logging: the message gives the log's request id
            assert json.loads(answer.value.read()) == {"error": f"internal server error; see the server log (request id {rid})"}
            time.sleep(0.2)  # uvicorn logs after the answer is sent
    finally:
        server.should_exit = True
        thread.join(10)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["internal error on GET /v1/thumb/1"], errors  # was a second one too
    assert errors[0].exc_info and str(errors[0].exc_info[1]) == "a bug"  # the traceback, once
