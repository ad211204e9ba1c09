"""Audit of serve --qdrant, index --prune and search --texts (helper audit, session 18): the mutants that survived
the feature tests, and the bugs found reading the code (prune racing a file that comes back, a dangling symlink
kept by prune, a million texts scored through two float32 copies of their bank)."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest

from polymodal import cli
from polymodal.apps import text_search
from polymodal.apps.text_search import read_text_lines, search_texts, text_embeddings
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex
from test_index import FakeModel, paint


# -- serve ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qdrant_client(lite, db, tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("qdrant_client")
    from fastapi.testclient import TestClient

    from polymodal.index.qdrant import QdrantCollection
    from polymodal.serve import create_app

    collection = QdrantCollection(str(tmp_path_factory.mktemp("q") / "q"), "photos")
    collection.push(ImageIndex(db), progress=False)
    with TestClient(create_app(lite, collection)) as c:
        yield c, collection


def test_a_point_id_works_in_any_uuid_spelling(qdrant_client):
    client, _ = qdrant_client
    hit = client.post("/v1/search", json={"text": "a cat", "k": 1}).json()["hits"][0]
    want = client.get(f"/v1/thumb/{hit['id']}")
    assert want.status_code == 200
    for spelling in (hit["id"].upper(), uuid.UUID(hit["id"]).hex, "{%s}" % hit["id"]):  # Qdrant answers lower-case
        got = client.get(f"/v1/thumb/{spelling}")
        assert got.status_code == 200 and got.content == want.content, (spelling, got.text)


def test_a_file_of_another_host_on_a_shared_mount_is_shown(qdrant_client, monkeypatch):
    client, collection = qdrant_client
    hit = client.post("/v1/search", json={"text": "a dog", "k": 1}).json()["hits"][0]
    real = collection.paths_for
    monkeypatch.setattr(collection, "paths_for", lambda ids: {i: (p, "box7") for i, (p, _) in real(ids).items()})
    assert client.get(hit["thumb"]).status_code == 200  # the path exists here: a mount of box7's files


def test_the_collection_server_refuses_writes_before_reading_the_body(qdrant_client):
    client, _ = qdrant_client
    res = client.post("/v1/index", content=b"{not json", headers={"content-type": "application/json"})
    assert res.status_code == 405 and "does not write" in res.json()["error"]


def test_a_local_server_takes_row_ids_up_to_sqlites_largest(lite, db):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    with TestClient(create_app(lite, db)) as client:
        for text in (str(2**63 - 1), str(2**63), "-1"):
            res = client.get(f"/v1/thumb/{text}")
            assert res.status_code == 404 and "no image with id" in res.json()["error"], (text, res.text)
        assert client.get("/v1/thumb/abc").status_code == 422


# -- index --prune ---------------------------------------------------------------------------------------------------
@pytest.fixture
def pruned_index(tmp_path):
    photos = tmp_path / "photos"
    for colour in ("red", "green", "blue"):
        paint(photos / f"{colour}.png", colour)
    index = ImageIndex(tmp_path / "db")
    index.update(photos, FakeModel(), progress=False)
    return index, photos


def test_prune_drops_a_symlink_whose_target_is_gone_like_a_folder_update(pruned_index, tmp_path):
    index, photos = pruned_index
    target = paint(tmp_path / "elsewhere" / "yellow.png", "yellow")
    (photos / "yellow.png").symlink_to(target)
    (photos / "linked-red.png").symlink_to(photos / "red.png")
    index.update(photos, FakeModel(), progress=False)
    assert len(index) == 5
    target.unlink()  # photos/yellow.png now dangles: no image to show, and a folder update would drop it
    assert [Path(p).name for p in index.prune()] == ["yellow.png"]
    assert len(index) == 4 and index.prune() == []  # the live symlink stays


def test_prune_keeps_a_file_that_came_back_before_it_took_the_lock(pruned_index, monkeypatch):
    index, photos = pruned_index
    (photos / "red.png").unlink()
    (photos / "green.png").unlink()
    real = ImageIndex._locked

    def locked(self):  # between prune's scan and its write: red.png is restored (e.g. the folder moved back)
        paint(photos / "red.png", "red")
        return real(self)

    monkeypatch.setattr(ImageIndex, "_locked", locked)
    assert [Path(p).name for p in index.prune()] == ["green.png"]
    monkeypatch.undo()
    assert sorted(Path(h.path).name for h in index.search_text(FakeModel(), "red", 5)) == ["blue.png", "red.png"]


def test_prune_forgets_only_the_failures_of_vanished_files(pruned_index):
    index, photos = pruned_index
    broken = photos / "broken.png"
    broken.write_bytes(b"not a png")
    with sqlite3.connect(index.sqlite_path) as con:
        con.executemany("INSERT INTO failures (path, size, mtime_ns, reason, failed) VALUES (?, 1, 1, 'broken', 'now')",
                        [(str(broken),), (str(photos / "gone.png"),)])
    assert index.prune() == []
    with sqlite3.connect(index.sqlite_path) as con:
        assert [p for (p,) in con.execute("SELECT path FROM failures")] == [str(broken)]


def test_prune_of_an_index_without_a_failures_table(pruned_index):
    index, photos = pruned_index
    with sqlite3.connect(index.sqlite_path) as con:  # an index made before failures were remembered
        con.execute("DROP TABLE failures")
    (photos / "blue.png").unlink()
    assert [Path(p).name for p in index.prune()] == ["blue.png"] and len(index) == 2


def test_prune_of_a_missing_index_is_one_line(tmp_path):
    with pytest.raises(PolymodalError, match="no index"):
        ImageIndex(tmp_path / "nothing").prune()
    assert not (tmp_path / "nothing").exists()


# -- search --texts --------------------------------------------------------------------------------------------------
class NumpyTexts:
    """A torch-free stand-in for a model's text side: each distinct text one fixed random unit vector (seeded by a
    CRC of the text: a character sum gave "caption 16" and "caption 25" one vector, whose scores then tied or not
    by the last bit of a matrix product, so the order of the two changed with BLAS builds)."""

    key, dim = "numpy-texts@1", 16

    def __init__(self):
        self.calls = 0

    def encode_text(self, texts):
        self.calls += 1
        out = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts]
        out = np.asarray(out, np.float32).reshape(len(texts), self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_read_text_lines_strips_spaces_and_skips_indented_comments(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("  a cat  \r\n \t \r\n\t# an indented comment\r\n\u3000\n a dog\n".encode())
    assert read_text_lines(path) == (["a cat", "a dog"], [1, 5])


def test_a_line_written_twice_is_listed_twice_in_file_order(tmp_path):
    model = NumpyTexts()
    texts = ["a dog", "a cat", "a bird", "a cat"]
    query = model.encode_text(["a cat"])
    hits = search_texts(model, query, texts, k=3, lines=[2, 5, 6, 9])[0]
    assert [(h.text, h.line) for h in hits[:2]] == [("a cat", 5), ("a cat", 9)]
    assert hits[0].score == pytest.approx(1.0, abs=1e-3) and hits[0].score == hits[1].score
    assert len(search_texts(model, query, texts, k=50)[0]) == 4  # k clamped to the texts
    with pytest.raises(PolymodalError, match="k must be a whole number"):
        search_texts(model, query, texts, k=0)
    with pytest.raises(PolymodalError, match="dimension 3"):
        search_texts(model, np.ones(3), texts)


def test_scores_and_order_do_not_depend_on_the_chunking(monkeypatch):
    model = NumpyTexts()
    texts = [f"caption {i % 37}" for i in range(500)]
    queries = np.random.default_rng(3).standard_normal((9, model.dim)).astype(np.float32)
    whole = search_texts(model, queries, texts, k=20)
    monkeypatch.setattr(text_search, "_CHUNK", 7)
    monkeypatch.setattr(text_search, "_SCORES", 1000)  # two queries a block
    chunked = search_texts(model, queries, texts, k=20)
    assert [[(h.line, round(h.score, 5)) for h in q] for q in chunked] == \
        [[(h.line, round(h.score, 5)) for h in q] for q in whole]
    bank = text_embeddings(model, texts)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    # scored once per distinct text, then spread over its lines: one product over all 500 columns can give a
    # text's copies scores that differ in the last bit (by their place in the BLAS kernel), so ties would not tie
    _, first, which = np.unique(texts, return_index=True, return_inverse=True)
    distinct = bank[first] / np.linalg.norm(bank[first], axis=1, keepdims=True)
    expect = np.argsort(-(q @ distinct.T)[:, which], axis=1, kind="stable")[:, :20]
    assert [[h.line - 1 for h in hits] for hits in whole] == expect.tolist()


def test_a_cache_entry_of_the_wrong_shape_is_embedded_again(monkeypatch):
    from polymodal.cache import cache_key, load_cached, store_cached

    model = NumpyTexts()
    texts = ["only the shape test uses this", "and this"]
    runtime = f"{type(model).__module__}.{type(model).__name__}"
    path, _ = load_cached(cache_key(model.key, runtime, *texts), "text-bank")
    store_cached(path, np.zeros((1, model.dim), np.float16))
    assert text_embeddings(model, texts).shape == (2, model.dim) and model.calls == 1
    text_embeddings(model, texts)
    assert model.calls == 1  # stored afresh, then read from the cache


def test_explain_maps_the_top_text(lite, gallery, tmp_path, monkeypatch, capsys):
    import polymodal
    from polymodal.apps import explain

    captions = tmp_path / "c.txt"
    captions.write_text("galaxies in deep space\na rocket on the launch pad\na cup of coffee\n")
    seen = []
    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: lite)
    monkeypatch.setattr(explain, "occlusion_heat", lambda model, image, query, **kw: seen.append(query) or np.zeros((7, 7)))
    monkeypatch.setattr(explain, "save_heatmap", lambda image, heat, out, **kw: Path(out))
    assert cli.main(["search", "--texts", str(captions), "--image", str(gallery / "rocket.jpg"), "-k", "3",
                     "--explain", str(tmp_path / "why.png"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rows[0]["text"] == "a rocket on the launch pad"
    np.testing.assert_allclose(seen[0], lite.encode_text(["a rocket on the launch pad"])[0], atol=1e-5)
    assert os.fspath(tmp_path / "why.png") == rows[0]["explain"]
