"""A server without an API key answers only Host names that DNS rebinding cannot take over."""

import socket

import pytest

from polymodal.errors import PolymodalError
from polymodal.serve.hosts import host_allowed, hostname_of
from polymodal.serve.limits import ServeSettings

pytest.importorskip("fastapi")
from starlette.testclient import TestClient  # noqa: E402

from polymodal.serve.app import create_app  # noqa: E402


@pytest.mark.parametrize("header, allowed", [
    (b"localhost:8000", True), (b"127.0.0.1:8000", True), (b"[::1]:8000", True), (b"192.168.1.20", True),
    (b"app.localhost:8000", True), (b"LOCALHOST.", True), (None, True),
    (b"evil.example:8000", False), (b"127.0.0.1.nip.io:8000", False), (b"localhost.evil.example", False),
])
def test_host_allowed(header, allowed):
    assert host_allowed(header, frozenset()) is allowed


def test_machine_name_and_extra_names():
    assert host_allowed(socket.gethostname().encode() + b":8000", frozenset())
    assert host_allowed(b"photos.example:443", frozenset({"photos.example"}))
    assert host_allowed(b"anything.example", frozenset({"*"}))
    assert hostname_of(b"[fe80::1]:80") == "fe80::1"


def test_keyless_server_refuses_a_rebound_name(lite, db):
    with TestClient(create_app(lite, db)) as c:
        assert c.get("/v1/info").status_code == 200  # conftest: "localhost"
        rebound = c.get("/v1/info", headers={"host": "evil.example:8000"})
        assert rebound.status_code == 403
        assert "--allow-host evil.example" in rebound.json()["error"]
        assert c.post("/v1/search", data={"text": "a cat"}, headers={"host": "evil.example"}).status_code == 403
        assert c.get("/v1/info", headers={"host": "127.0.0.1:8000"}).status_code == 200


def test_allowed_host_and_key(lite, db):
    settings = ServeSettings(allowed_hosts=("photos.example",))
    with TestClient(create_app(lite, db, settings=settings)) as c:
        assert c.get("/v1/info", headers={"host": "photos.example"}).status_code == 200
        assert "allowed_hosts" not in c.get("/v1/info").json()["limits"]
    with TestClient(create_app(lite, db, api_key="k")) as c:  # a rebinding page cannot know the key
        assert c.get("/v1/info", headers={"host": "evil.example", "x-api-key": "k"}).status_code == 200


def test_allowed_hosts_setting_checked():
    with pytest.raises(PolymodalError, match="allowed_hosts"):
        ServeSettings(allowed_hosts="photos.example")


def test_cli_flag_reaches_settings(monkeypatch, db):
    from polymodal.cli import main

    seen = {}

    def fake_create_app(*args, settings=None, **kwargs):
        seen["settings"] = settings
        raise PolymodalError("stop here")

    monkeypatch.setattr("polymodal.serve.app.create_app", fake_create_app)
    assert main(["serve", "--db", str(db), "--port", "0", "--allow-host", "a.example", "--allow-host", "b.example"]) == 2
    assert seen["settings"].allowed_hosts == ("a.example", "b.example")


def test_healthz_answers_any_host(lite, db):
    with TestClient(create_app(lite, db)) as c:
        assert c.get("/healthz", headers={"host": "polymodal-svc:8000"}).status_code == 200
        assert c.get("/v1/info", headers={"host": "polymodal-svc:8000"}).status_code == 403


def test_starlettes_test_client_name_gets_the_hint(lite, db):
    with TestClient(create_app(lite, db), base_url="http://testserver") as c:
        answer = c.get("/v1/info")
    assert answer.status_code == 403 and 'base_url="http://localhost"' in answer.json()["error"]
