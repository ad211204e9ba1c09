"""Review of the Qdrant backend: old servers, races, request sizes, pagination, folders and CLI wiring (local mode)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex
from polymodal.index import qdrant as qdrant_module
from polymodal.index.qdrant import QdrantCollection

import test_qdrant
from test_index import COLOURS, FakeModel  # noqa: E402
from test_qdrant import _photos, _Refusing

built = test_qdrant.built  # the fixture: an index of the seven colours and an empty local-mode collection

pytest.importorskip("qdrant_client", reason="the qdrant extra: pip install -e '.[qdrant]'")


def test_a_server_that_drops_metadata_is_refused_and_the_new_collection_removed(built, monkeypatch):
    """Servers before 1.16 ignore `metadata`: the push made a collection that every later search refused."""
    _, index, collection = built
    client = collection._client_(create=True)
    real = client.create_collection
    monkeypatch.setattr(client, "create_collection", lambda *a, metadata=None, **kw: real(*a, **kw))
    with pytest.raises(PolymodalError, match="does not keep collection metadata .servers before 1.16.*upgrade"):
        collection.push(index, progress=False)
    assert not client.collection_exists("photos")


def test_a_collection_made_by_a_concurrent_push_is_checked_not_an_error(built, tmp_path, monkeypatch):
    _, index, collection = built
    collection.push(index, progress=False)
    client = collection._client_()
    real, calls = client.collection_exists, []

    def first_says_absent(name):  # the other push creates it between our check and our create
        calls.append(name)
        return len(calls) > 1 and real(name)

    monkeypatch.setattr(client, "collection_exists", first_says_absent)
    report = collection.push(index, progress=False)
    assert (report.added, report.unchanged) == (0, len(COLOURS))
    other = ImageIndex(tmp_path / "db16")
    other.update(_photos(tmp_path / "p16", ["red"]), FakeModel(dim=16), progress=False)
    calls.clear()
    with pytest.raises(PolymodalError, match="not fake@1 .dim 16"):
        collection.push(other, progress=False)


def test_a_push_into_another_models_collection_says_to_push_elsewhere(built, tmp_path):
    """The index's model is fixed: `--model` (the search-side advice) would make `polymodal index` refuse it."""
    _, index, collection = built
    collection.push(index, progress=False)
    other = ImageIndex(tmp_path / "db16")
    other.update(_photos(tmp_path / "p16", ["red"]), FakeModel(dim=16), progress=False)
    with pytest.raises(PolymodalError) as err:
        collection.push(other, progress=False)
    assert "push the index to another --collection" in str(err.value) and "--model" not in str(err.value)


def test_the_payload_index_is_made_by_a_later_push_when_the_first_stopped_before_it(built, monkeypatch):
    """Remote mode: a push stopped between create_collection and create_payload_index left the collection without
    the index its filters need (a server in strict mode refuses un-indexed filters)."""
    _, index, collection = built
    client = collection._client_(create=True)
    collection.remote = True  # local mode stands in for the server; its payload_schema is always empty
    made = []

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "create_payload_index", stopped)
    with pytest.raises(KeyboardInterrupt):
        collection.push(index, progress=False)
    assert client.collection_exists("photos")
    monkeypatch.setattr(client, "create_payload_index", lambda name, field, **kw: made.append((name, field, kw)))
    collection.push(index, progress=False)
    assert [(n, f) for n, f, _ in made] == [("photos", "index"), ("photos", "host"), ("photos", "db")]
    assert all(str(kw["field_schema"]).lower().endswith("keyword") for _, _, kw in made)
    real = client.get_collection

    def indexed(name):
        info = real(name)
        info.payload_schema = {"index": "keyword", "host": "keyword", "db": "keyword"}
        return info

    monkeypatch.setattr(client, "get_collection", indexed)
    collection.push(index, progress=False)
    assert len(made) == 3  # present: not made again


def test_upserts_stay_under_the_request_size_limit(built, monkeypatch):
    """~21 bytes of JSON a float: 256 rows of 8192 dims would be 45 MB, over a server's 32 MB default."""
    _, index, collection = built
    sizes = []
    real = QdrantCollection._upsert
    monkeypatch.setattr(QdrantCollection, "_upsert", lambda self, meta, host, found: (sizes.append(len(found)),
                                                                                        real(self, meta, host, found)))
    monkeypatch.setattr(qdrant_module, "_FLOATS_PER_REQUEST", 3 * 8)  # three rows of FakeModel's 8 dims
    report = collection.push(index, progress=False)
    assert sizes == [3, 3, 1] and report.added == len(COLOURS)
    assert 2**19 // 2048 == 256 and 2**19 * 22 < 32 * 2**20  # 2048 dims still go 256 at a time, ~11 MB


def test_pages_of_ids_are_all_read_and_all_deleted(built, monkeypatch):
    """A server answers a scroll page by page: every page of this index's ids counts, and deletes go in pages."""
    pics, index, collection = built
    monkeypatch.setattr(qdrant_module, "_PAGE", 2)
    client = collection._client_(create=True)
    real_delete, deletes = client.delete, []
    monkeypatch.setattr(client, "delete", lambda name, selector, **kw: (deletes.append(len(selector.points)),
                                                                        real_delete(name, selector, **kw)))
    collection.push(index, progress=False)
    again = collection.push(index, progress=False)
    assert (again.added, again.removed, again.unchanged) == (0, 0, len(COLOURS))
    for name in ("red", "green", "blue", "cyan", "magenta"):
        (pics / f"{name}.png").unlink()
    index.update(pics, FakeModel(), progress=False)
    report = collection.push(index, progress=False)
    assert (report.added, report.removed, report.unchanged) == (0, 5, 2) and deletes == [2, 2, 1]
    assert collection.info()["count"] == 2


def test_a_folder_holding_other_files_is_not_taken_for_local_mode(built):
    """`--qdrant pics` or `--qdrant pics.idx` (the index, not the collection) would get Qdrant's files in it."""
    pics, index, collection = built
    for folder in (pics, index.db):
        before = sorted(p.name for p in folder.iterdir())
        with pytest.raises(PolymodalError, match="holding other files .* and no Qdrant data; pass a new or empty"):
            QdrantCollection(str(folder), "photos").push(index, progress=False)
        with pytest.raises(PolymodalError, match="holding other files"):
            QdrantCollection(str(folder), "photos").info()
        assert sorted(p.name for p in folder.iterdir()) == before
    with pytest.raises(PolymodalError, match="is a file; pass a folder"):
        QdrantCollection(str(pics / "red.png"), "photos").push(index, progress=False)
    (Path(collection.location)).mkdir()
    (Path(collection.location) / ".DS_Store").write_text("")
    assert collection.push(index, progress=False).added == len(COLOURS)  # empty but for hidden files: fine


def test_no_version_check_warning_comes_after_the_error(monkeypatch):
    """The client's compatibility check runs in a thread: its warning escaped the filter and came out later."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("QDRANT_API_KEY", raising=False)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(PolymodalError, match="refused the request .401."):
                QdrantCollection(f"http://127.0.0.1:{server.server_port}", "photos").info()
            time.sleep(0.5)  # the thread would have answered by now
    finally:
        server.shutdown()
        server.server_close()
    assert [str(w.message) for w in seen if "server version" in str(w.message)] == []


def test_search_returns_every_field_as_the_local_index(built):
    _, index, collection = built
    collection.push(index, progress=False)
    hits = collection.search(FakeModel().encode_text(["red", "blue"]), 3)
    assert len(hits) == 2 and all(len(h) == 3 for h in hits)
    assert Path(hits[0][0].path).name == "red.png" and hits[0][0].host == socket.gethostname()
    assert hits[0][0].score == pytest.approx(1, abs=1e-5) and hits[0][0].score >= hits[0][1].score
    info = collection.info()
    assert {k: info[k] for k in ("collection", "count", "model", "model_name", "model_version", "dim")} == {
        "collection": "photos", "count": len(COLOURS), "model": "fake@1", "model_name": "fake", "model_version": "1",
        "dim": 8}
    with pytest.raises(PolymodalError, match="k must"):
        collection.search(np.ones(8), 0)


# -- the CLI ------------------------------------------------------------------------------------------------------


@pytest.fixture
def pushed(tmp_path, monkeypatch):
    pics = _photos(tmp_path / "pics", ["red", "blue", "green"])
    db, q = str(tmp_path / "db"), str(tmp_path / "q")
    monkeypatch.setattr("polymodal.load", lambda name, **kw: FakeModel())
    assert main(["index", str(pics), "--db", db, "--qdrant", q, "--collection", "demo", "--json"]) == 0
    return pics, db, q


def test_cli_collection_names_the_collection_everywhere(pushed, capsys):
    _, db, q = pushed
    capsys.readouterr()
    assert main(["info", "--qdrant", q, "--collection", "other"]) == 2
    assert "no Qdrant collection other at" in capsys.readouterr().err
    assert main(["search", "red", "--qdrant", q, "--collection", "other"]) == 2
    assert "no Qdrant collection other at" in capsys.readouterr().err
    assert main(["info", "--qdrant", q, "--collection", "demo", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["qdrant"]
    assert (shown["collection"], shown["count"], shown["model"]) == ("demo", 3, "fake@1")


def test_cli_push_only_json(pushed, capsys):
    _, db, q = pushed
    capsys.readouterr()
    assert main(["index", "--db", db, "--qdrant", q, "--collection", "demo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: out["qdrant"][k] for k in ("added", "removed", "unchanged", "count")} == {
        "added": 0, "removed": 0, "unchanged": 3, "count": 3}
    assert out["index"]["count"] == 3 and out["added"] == 0
    assert main(["index", "--db", db, "--qdrant", q, "--collection", "demo", "--json"]) == 0
    assert capsys.readouterr().err == ""  # no progress bar beside JSON


def test_cli_text_search_names_other_hosts_only(pushed, capsys, monkeypatch):
    pics, db, q = pushed
    capsys.readouterr()
    assert main(["search", "red", "--qdrant", q, "--collection", "demo", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert str(pics / "red.png") in out and f"{socket.gethostname()}:" not in out
    pusher = socket.gethostname()
    monkeypatch.setattr(socket, "gethostname", lambda: "somewhere-else")  # searching from another machine
    assert main(["search", "red", "--qdrant", q, "--collection", "demo", "-k", "1"]) == 0
    assert f"{pusher}:{pics / 'red.png'}" in capsys.readouterr().out


def test_cli_explain_of_a_file_on_another_host_says_so(tmp_path, monkeypatch, capsys):
    pics = _photos(tmp_path / "pics", ["red", "blue"])
    db, q = str(tmp_path / "db"), str(tmp_path / "q")
    monkeypatch.setattr("polymodal.load", lambda name, **kw: FakeModel())
    monkeypatch.setattr(socket, "gethostname", lambda: "photo-box")
    assert main(["index", str(pics), "--db", db, "--qdrant", q]) == 0
    monkeypatch.undo()
    monkeypatch.setattr("polymodal.load", lambda name, **kw: FakeModel())
    (pics / "red.png").unlink()  # not on this machine
    capsys.readouterr()
    assert main(["search", "red", "--qdrant", q, "--explain", str(tmp_path / "why.png")]) == 2
    err = capsys.readouterr().err
    assert "which is on photo-box; run the search there, or drop --explain" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["index", "pics", "--db", "x", "--collection", "c"], "pass --qdrant URL with it"),
    (["info", "--collection", "c"], "pass --qdrant URL with it"),
    (["search", "red", "--qdrant", "nowhere"], "no Qdrant folder at nowhere"),
    (["info", "--qdrant", "q", "--collection", "a b"], "collection name 'a b'"),
])
def test_cli_usage_errors_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pics").mkdir()
    _photos(tmp_path / "pics", ["red"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_one_line_for_both_statuses(status):
    from qdrant_client.http.exceptions import UnexpectedResponse

    exc = UnexpectedResponse(status, "Forbidden", b'{"status":{"error":"bad key"}}', None)
    assert str(QdrantCollection("http://q:6333", "photos")._explain(exc)) == (
        f"Qdrant at http://q:6333 refused the request ({status}); set QDRANT_API_KEY")


def test_writes_wait_and_counts_are_exact(built, monkeypatch):
    """On a server, an upsert without wait=True returns before the points are searchable (and counted), and a
    count without exact=True is an estimate: the push summary would report stale numbers."""
    _, index, collection = built
    client = collection._client_(create=True)
    seen = {}
    for name in ("upsert", "delete", "count"):
        real = getattr(client, name)
        monkeypatch.setattr(client, name, lambda *a, _real=real, _name=name, **kw: (
            seen.setdefault(_name, []).append(kw), _real(*a, **kw))[1])
    collection.push(index, progress=False)
    index.remove([index.search(np.ones(8), 1)[0][0].path])
    collection.push(index, progress=False)
    collection.info()
    assert seen["upsert"] and all(kw.get("wait") is True for kw in seen["upsert"])
    assert seen["delete"] and all(kw.get("wait") is True for kw in seen["delete"])
    assert seen["count"] and all(kw.get("exact") is True for kw in seen["count"])
