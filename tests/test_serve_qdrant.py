"""`polymodal serve --qdrant`: the service over a Qdrant collection (searched and thumbnailed, never written), with
the real `lite` model over the sample gallery pushed into Qdrant's embedded local mode."""

import uuid
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("qdrant_client")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal import cli  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402
from polymodal.index.qdrant import QdrantCollection, QdrantUnavailable  # noqa: E402
from polymodal.serve import create_app  # noqa: E402


def error_of(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()["error"]


@pytest.fixture()
def collection(db, tmp_path):
    collection = QdrantCollection(str(tmp_path / "q"), "photos")
    collection.push(ImageIndex(db), progress=False)
    return collection


@pytest.fixture()
def client(lite, collection):
    with TestClient(create_app(lite, collection)) as c:
        yield c


def test_search_and_thumbnails_come_from_the_collection(client, collection, db):
    info = client.get("/v1/info").json()["index"]
    assert info["count"] == len(ImageIndex(db)) and info["writable"] is False and "photos" in info["where"]
    res = client.post("/v1/search", json={"text": "a photo of a cat", "k": 3})
    assert res.status_code == 200, res.text
    hits = res.json()["hits"]
    local = ImageIndex(db).search_text(client.app.state.service.model, "a photo of a cat", 3)
    assert [h["path"] for h in hits] == [h.path for h in local]
    assert all(str(uuid.UUID(h["id"])) == h["id"] and h["host"] for h in hits)
    thumb = client.get(hits[0]["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"


def test_the_collection_is_not_written_through_the_server(client, gallery, collection):
    before = collection.info()["count"]
    files = {"image": ("x.jpg", (gallery / "cat.jpg").read_bytes(), "image/jpeg")}
    assert "does not write" in error_of(client.post("/v1/index", files=files), 405)
    message = error_of(client.post("/v1/index", json={"remove": [1]}), 405)
    assert f"polymodal index PHOTOS --db DB --qdrant {collection.location} --collection photos" in message
    assert collection.info()["count"] == before


def test_thumbnail_ids_are_checked(client, collection, monkeypatch):
    assert "not a point id" in error_of(client.get("/v1/thumb/12"), 422)
    assert "no image with id" in error_of(client.get(f"/v1/thumb/{uuid.uuid4()}"), 404)
    hit = client.post("/v1/search", json={"text": "a dog", "k": 1}).json()["hits"][0]
    real = collection.paths_for
    monkeypatch.setattr(collection, "paths_for", lambda ids: {i: ("/elsewhere/dog.jpg", "box7") for i in real(ids)})
    assert "is on host box7, not on this server" in error_of(client.get(hit["thumb"]), 404)
    monkeypatch.setattr(collection, "paths_for", lambda ids: {i: ("/nowhere/dog.jpg", None) for i in real(ids)})
    assert "file is gone; re-index its folder and push the index again" in error_of(client.get(hit["thumb"]), 404)


def test_an_unreachable_or_deleted_collection_is_the_servers_problem(client, collection, monkeypatch):
    def down(*args, **kwargs):
        raise QdrantUnavailable("cannot reach Qdrant at http://q:6333 (connection refused)")

    with monkeypatch.context() as m:
        m.setattr(collection, "search", down)
        res = client.post("/v1/search", json={"text": "a dog"})
        assert "cannot reach Qdrant" in error_of(res, 503) and res.headers["retry-after"] == "5"
    collection._client_().delete_collection("photos")
    assert "is gone" in error_of(client.post("/v1/search", json={"text": "a dog"}), 503)


def test_the_page_hides_uploads_for_a_collection(client):
    page = client.get("/").text
    assert 'id="add"' in page and "writable = info.index.writable === true" in page  # the Add panel and the
    assert 'showPanel("add", writable)' in page and '"add": ["add"]' in page  # (PANELS, rendered into the page)
    assert "if (writable) {" in page  # the results' remove buttons


@pytest.mark.parametrize("args, message", [
    (["serve"], "pass either --db DB"),
    (["serve", "--db", "x", "--qdrant", "y"], "pass either --db DB"),
    (["serve", "--db", "x", "--collection", "c"], "pass --qdrant URL with it"),
])
def test_cli_usage_errors(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_cli_names_a_missing_collection(capsys, tmp_path):
    (tmp_path / "q").mkdir()
    assert cli.main(["serve", "--qdrant", str(tmp_path / "q"), "--collection", "nope", "--port", "0"]) == 2
    assert "no Qdrant collection nope" in capsys.readouterr().err
    assert not Path(tmp_path / "q" / "collection" / "nope").exists()


def test_qdrant_gone_while_checking_an_error_is_still_503(client, collection, monkeypatch):
    from polymodal.errors import PolymodalError

    def odd(*args, **kwargs):
        raise PolymodalError("Qdrant at q answered 404: collection vanished")

    def down():
        raise QdrantUnavailable("cannot reach Qdrant at http://q:6333 (connection refused)")

    monkeypatch.setattr(collection, "search", odd)
    monkeypatch.setattr(collection, "exists", down)
    res = client.post("/v1/search", json={"text": "a dog"})
    assert "cannot reach Qdrant" in error_of(res, 503) and res.headers["retry-after"] == "5"
