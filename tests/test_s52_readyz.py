"""/readyz: a load balancer's readiness probe. /healthz says only that the process is up: it stayed 200 while every
search answered 503 (the index moved away, or rebuilt with another model), so the balancer kept sending searches there
(stop 52's monitoring review). /readyz is 503 then, with the reason and no path, and like /healthz needs no key and
answers any Host."""

import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import create_app  # noqa: E402
from test_deploy_walkthrough import db_copy, other_model  # noqa: E402,F401 - db_copy: a fixture, a private copy
from test_serve import error_of  # noqa: E402


def test_readyz_is_503_while_the_index_is_moved_away_and_200_again_once_back(lite, db_copy, tmp_path):  # noqa: F811
    with TestClient(create_app(lite, db_copy, api_key="s3cret"), base_url="http://photos-svc:8000") as c:
        ready = c.get("/readyz")  # no key, a container's service name as Host
        assert ready.status_code == 200 and ready.json() == {"status": "ok"}
        assert c.head("/readyz").status_code == 200
        shutil.move(db_copy, tmp_path / "moved")
        assert c.get("/healthz").status_code == 200  # the process is up: liveness says nothing more
        r = c.get("/readyz")
        assert "cannot be searched now" in error_of(r, 503) and r.headers["retry-after"]
        assert str(tmp_path) not in r.text  # answered without the key: no path
        shutil.move(tmp_path / "moved", db_copy)
        assert c.get("/readyz").status_code == 200
        spec = c.get("/openapi.json", headers={"X-API-Key": "s3cret"}).json()
        assert spec["paths"]["/readyz"]["get"]["security"] == []  # documented as open, as it answers


def test_readyz_is_503_once_the_index_holds_another_models_vectors(lite, db_copy, gallery):  # noqa: F811
    with TestClient(create_app(lite, db_copy)) as c:
        assert c.get("/readyz").status_code == 200
        shutil.rmtree(db_copy)
        ImageIndex(db_copy).add([gallery / "cat.jpg"], other_model(lite))
        assert "rebuilt with another model" in error_of(c.get("/readyz"), 503)
        assert c.get("/v1/info").status_code == 200  # (info still answers: it shows both keys)


def test_readyz_is_503_not_a_500_when_the_index_is_damaged(lite, db_copy):  # noqa: F811
    """A meta.sqlite that is no database any more was a 500 and a logged traceback on every probe."""
    with TestClient(create_app(lite, db_copy), raise_server_exceptions=False) as c:
        assert c.get("/readyz").status_code == 200
        (db_copy / "meta.sqlite").write_bytes(b"not a database" * 100)
        assert "cannot be searched now" in error_of(c.get("/readyz"), 503)


def test_a_bearer_header_without_its_key_is_a_missing_key(lite, db):
    """`Authorization: Bearer` with nothing after it said "wrong API key"; it is no key at all."""
    with TestClient(create_app(lite, db, api_key="s3cret")) as c:
        assert "missing API key" in error_of(c.get("/metrics", headers={"Authorization": "Bearer "}), 401)
        assert "missing API key" in error_of(c.get("/metrics", headers={"Authorization": "Bearer"}), 401)
        assert c.get("/metrics", headers={"Authorization": "bearer s3cret"}).status_code == 200
