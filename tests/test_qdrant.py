"""Pushing an image index to Qdrant and searching it there (Qdrant's embedded local mode: same client API as a server)."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex
from polymodal.index.qdrant import QdrantCollection, point_id

from test_index import COLOURS, FakeModel  # noqa: E402 - colour images whose vectors are their projected colour

pytest.importorskip("qdrant_client", reason="the qdrant extra: pip install -e '.[qdrant]'")


def _photos(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (16, 16), COLOURS[name]).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def built(tmp_path):
    pics = _photos(tmp_path / "pics", COLOURS)
    index = ImageIndex(tmp_path / "db")
    index.update(pics, FakeModel(), progress=False)
    return pics, index, QdrantCollection(str(tmp_path / "q"), "photos")


def test_search_matches_the_local_index(built):
    _, index, collection = built
    report = collection.push(index, progress=False)
    assert (report.added, report.removed, report.unchanged) == (len(COLOURS), 0, 0)
    model = FakeModel()
    queries = model.encode_text(list(COLOURS))
    local, remote = index.search(queries, 4), collection.search(queries, 4)
    for a, b in zip(local, remote):
        assert [h.path for h in a] == [h.path for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
        assert all(float(np.float32(h.score)) == h.score for h in b)  # float32, as the local index's (no 1.0000000000000002)
    assert remote[0][0].host  # which machine holds the file
    assert collection.info()["count"] == len(COLOURS) and collection.info()["model"] == model.key


def test_push_sends_only_the_difference(built):
    pics, index, collection = built
    collection.push(index, progress=False)
    again = collection.push(index, progress=False)
    assert (again.added, again.removed, again.unchanged) == (0, 0, len(COLOURS))
    (pics / "red.png").unlink()
    Image.new("RGB", (16, 16), COLOURS["red"]).save(pics / "blue.png")  # blue.png changed: a new row
    index.update(pics, FakeModel(), progress=False)
    report = collection.push(index, progress=False)
    assert (report.added, report.removed, report.unchanged) == (1, 2, len(COLOURS) - 2)
    hits = collection.search_text(FakeModel(), "red", 2)
    assert [Path(h.path).name for h in hits][0] == "blue.png" and hits[0].score == pytest.approx(1, abs=1e-5)
    assert collection.info()["count"] == len(index) == len(COLOURS) - 1


def test_an_interrupted_push_is_finished_by_the_next(built, monkeypatch):
    _, index, collection = built
    real, calls = QdrantCollection._upsert, []

    def flaky(self, meta, host, found):
        calls.append(len(found))
        if len(calls) == 3:
            raise PolymodalError("network down")
        real(self, meta, host, found)

    monkeypatch.setattr(QdrantCollection, "_upsert", flaky)
    with pytest.raises(PolymodalError, match="network down"):
        collection.push(index, progress=False, batch_size=2)
    monkeypatch.setattr(QdrantCollection, "_upsert", real)
    assert collection.info()["count"] == 4  # two batches of two landed
    report = collection.push(index, progress=False, batch_size=2)
    assert (report.added, report.unchanged) == (len(COLOURS) - 4, 4)
    assert collection.info()["count"] == len(COLOURS)


def test_two_indexes_share_a_collection_and_each_push_touches_only_its_own(tmp_path):
    collection = QdrantCollection(str(tmp_path / "q"), "shared")
    warm = ImageIndex(tmp_path / "db1")
    warm.update(_photos(tmp_path / "warm", ["red", "yellow", "magenta"]), FakeModel(), progress=False)
    cool = ImageIndex(tmp_path / "db2")
    cool_pics = _photos(tmp_path / "cool", ["blue", "cyan", "green"])
    cool.update(cool_pics, FakeModel(), progress=False)
    collection.push(warm, progress=False)
    collection.push(cool, progress=False)
    assert collection.info()["count"] == 6
    (cool_pics / "cyan.png").unlink()
    cool.update(cool_pics, FakeModel(), progress=False)
    report = collection.push(cool, progress=False)
    assert (report.added, report.removed, report.unchanged) == (0, 1, 2)
    names = {Path(h.path).name for h in collection.search_text(FakeModel(), "white", 10)}
    assert names == {"red.png", "yellow.png", "magenta.png", "blue.png", "green.png"}
    again = collection.push(warm, progress=False)  # the warm index's points were never touched
    assert (again.added, again.removed, again.unchanged) == (0, 0, 3)


def test_point_ids_are_stable_and_distinct_per_index():
    assert point_id("a" * 32, 1) == point_id("a" * 32, 1)
    assert len({point_id("a" * 32, 1), point_id("a" * 32, 2), point_id("b" * 32, 1)}) == 3


def test_another_model_is_refused(built, tmp_path):
    _, index, collection = built
    collection.push(index, progress=False)
    other = ImageIndex(tmp_path / "db16")
    other.update(_photos(tmp_path / "p16", ["red"]), FakeModel(dim=16), progress=False)
    with pytest.raises(PolymodalError, match="holds vectors of model fake@1 .dim 8., not fake@1 .dim 16."):
        collection.push(other, progress=False)
    with pytest.raises(PolymodalError, match="not fake@1 .dim 16"):
        collection.check_model(FakeModel(dim=16))
    with pytest.raises(PolymodalError, match="dimension 16 but Qdrant collection photos"):
        collection.search(np.ones(16), 3)
    assert collection.info()["count"] == len(COLOURS)


def test_missing_things_are_one_clear_error(tmp_path, built):
    _, index, collection = built
    typo = tmp_path / "typo"
    with pytest.raises(PolymodalError, match="no Qdrant folder at"):
        QdrantCollection(str(typo), "photos").info()
    assert not typo.exists()  # a search never makes a folder
    collection.push(index, progress=False)
    from qdrant_client import models

    client = collection._client_()  # local mode: one client per folder, shared by the collections below
    absent, theirs = QdrantCollection(collection.location, "absent"), QdrantCollection(collection.location, "theirs")
    absent._client = theirs._client = client
    with pytest.raises(PolymodalError, match="no Qdrant collection absent at"):
        absent.search(np.ones(8), 3)
    client.create_collection("theirs", vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE))
    with pytest.raises(PolymodalError, match="not made by polymodal"):
        theirs.push(index, progress=False)
    for bad in ("", "a b", "x/y"):
        with pytest.raises(PolymodalError):
            QdrantCollection(collection.location, bad)
    with pytest.raises(PolymodalError, match="needs its scheme, e.g. http://localhost:6333"):
        QdrantCollection("localhost:6333")


def test_a_folder_open_in_another_client_is_named(built):
    _, index, collection = built
    collection.push(index, progress=False)
    with pytest.raises(PolymodalError, match="open in another process"):
        QdrantCollection(collection.location, "photos").info()


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        body = json.dumps({"status": {"error": "Must provide an API key"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_server_errors_say_what_to_do(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("QDRANT_API_KEY", raising=False)
        with pytest.raises(PolymodalError, match="refused the request .401.; set QDRANT_API_KEY"):
            QdrantCollection(f"http://127.0.0.1:{server.server_port}", "photos").info()
    finally:
        server.shutdown()
        server.server_close()  # the port refuses from now on
    with pytest.raises(PolymodalError, match="cannot reach Qdrant at http://127.0.0.1:"):
        QdrantCollection(f"http://127.0.0.1:{server.server_port}", "photos").info()


def test_cli_index_push_search_info(tmp_path, capsys, monkeypatch):
    pics = _photos(tmp_path / "pics", ["red", "blue", "green"])
    db, q = str(tmp_path / "db"), str(tmp_path / "q")
    monkeypatch.setattr("polymodal.load", lambda name, **kw: FakeModel())
    assert main(["index", str(pics), "--db", db, "--qdrant", q, "--collection", "demo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["added"] == 3 and out["qdrant"]["added"] == 3 and out["qdrant"]["count"] == 3
    assert main(["search", "red", "--qdrant", q, "--collection", "demo", "-k", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(rows[0]["path"]).name == "red.png" and rows[0]["host"] and len(rows) == 2
    (pics / "green.png").unlink()
    assert main(["index", str(pics), "--db", db]) == 0  # the local index only
    assert main(["index", "--db", db, "--qdrant", q, "--collection", "demo"]) == 0  # push only, no model needed
    assert "0 added, 1 removed, 2 unchanged; 2 images in the collection" in capsys.readouterr().out
    assert main(["info", "--qdrant", q, "--collection", "demo", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["qdrant"]["count"] == 2


@pytest.mark.parametrize("args, message", [
    (["search", "red"], "pass one of --db DB"),
    (["search", "red", "--db", "x", "--qdrant", "y"], "pass one of --db DB"),
    (["index", "--db", "x"], "pass folders of images"),
    (["search", "red", "--db", "x", "--collection", "c"], "pass --qdrant URL with it"),
    (["search", "red", "--qdrant", "localhost:6333"], "needs its scheme"),
])
def test_cli_usage_errors(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_a_rebuilt_index_replaces_the_earlier_ones_points(built, tmp_path):
    import shutil

    pics, index, collection = built
    collection.push(index, progress=False)
    other = ImageIndex(tmp_path / "elsewhere")  # another index, another --db: kept
    other.update(_photos(tmp_path / "more", ["red"]), FakeModel(), progress=False)
    collection.push(other, progress=False)
    shutil.rmtree(index.db)  # rebuilt at the same --db: a new uid, and the old points would be duplicates
    (pics / "white.png").unlink()
    index.update(pics, FakeModel(), progress=False)
    report = collection.push(index, progress=False)
    assert (report.added, report.replaced, report.unchanged) == (len(COLOURS) - 1, len(COLOURS), 0)
    assert "7 of an earlier index at this --db removed" in report.summary()
    assert collection.info()["count"] == len(COLOURS) - 1 + 1
    names = [Path(h.path).name for h in collection.search_text(FakeModel(), "red", 3)]
    assert names.count("red.png") == 2  # this index's and the other index's; no stale duplicate
    assert collection.push(index, progress=False).replaced == 0


def test_index_checks_the_collection_before_embedding(tmp_path, capsys, monkeypatch):
    pics = _photos(tmp_path / "pics", ["red", "blue"])
    q = str(tmp_path / "q")
    monkeypatch.setattr("polymodal.load", lambda name, **kw: FakeModel())
    assert main(["index", str(pics), "--db", str(tmp_path / "db"), "--qdrant", q]) == 0
    embedded = []

    class Wide(FakeModel):
        def _image_batch(self, pixels):
            embedded.append(len(pixels))
            return super()._image_batch(pixels)

    monkeypatch.setattr("polymodal.load", lambda name, **kw: Wide(dim=16))
    assert main(["index", str(pics), "--db", str(tmp_path / "db16"), "--qdrant", q]) == 2
    assert "holds vectors of model fake@1 (dim 8)" in capsys.readouterr().err
    assert embedded == [] and not (tmp_path / "db16").exists()  # refused before any work
    assert main(["index", str(pics), "--db", str(tmp_path / "db2"), "--qdrant", "http://127.0.0.1:1"]) == 2
    assert "cannot reach Qdrant" in capsys.readouterr().err and not (tmp_path / "db2").exists()


def test_a_copied_index_is_refused_a_moved_one_takes_its_points_over(tmp_path):
    """Copied index folders share a uid, hence point ids: pushing both would overwrite each other's images."""
    import shutil

    collection = QdrantCollection(str(tmp_path / "q"), "shared")
    a = ImageIndex(tmp_path / "a.idx")
    a.update(_photos(tmp_path / "shared", ["red", "green"]), FakeModel(), progress=False)
    shutil.copytree(a.db, tmp_path / "b.idx")
    b = ImageIndex(tmp_path / "b.idx")
    b.update(_photos(tmp_path / "theirs", ["blue"]), FakeModel(), progress=False)
    a.update(_photos(tmp_path / "mine", ["yellow"]), FakeModel(), progress=False)
    collection.push(b, progress=False)
    with pytest.raises(PolymodalError, match="one was copied from the other"):
        collection.push(a, progress=False)
    moved = QdrantCollection(str(tmp_path / "q2"), "shared")
    moved.push(a, progress=False)
    shutil.move(str(a.db), str(tmp_path / "c.idx"))  # a move on this host: the points are the same rows
    report = moved.push(ImageIndex(tmp_path / "c.idx"), progress=False)
    assert (report.added, report.removed, report.unchanged) == (0, 0, 3)


def test_a_push_after_the_hostname_changed_is_the_same_index(tmp_path, monkeypatch):
    """A container or pod gets a new hostname on every start: the same --db pushed again is not "a copy"."""
    import socket

    collection = QdrantCollection(str(tmp_path / "q"), "shared")
    index = ImageIndex(tmp_path / "a.idx")
    index.update(_photos(tmp_path / "pics", ["red", "green"]), FakeModel(), progress=False)
    monkeypatch.setattr(socket, "gethostname", lambda: "pod-abcde")
    collection.push(index, progress=False)
    monkeypatch.setattr(socket, "gethostname", lambda: "pod-fghij")  # restarted: same volume, new name
    report = collection.push(ImageIndex(tmp_path / "a.idx"), progress=False)
    assert (report.added, report.removed, report.unchanged) == (0, 0, 2)


def test_a_copy_of_a_moved_index_is_refused_too(tmp_path):
    """After a move, the unchanged points still named the old folder; the check looked at one point only, so a
    copy of the moved index slipped through behind them. A takeover now renames the points, and every origin is
    checked."""
    import shutil

    collection = QdrantCollection(str(tmp_path / "q"), "shared")
    a = ImageIndex(tmp_path / "a.idx")
    a.update(_photos(tmp_path / "pics", ["red", "green"]), FakeModel(), progress=False)
    collection.push(a, progress=False)
    shutil.move(str(tmp_path / "a.idx"), str(tmp_path / "c.idx"))  # moved on this host
    c = ImageIndex(tmp_path / "c.idx")
    c.update(_photos(tmp_path / "more", ["blue"]), FakeModel(), progress=False)
    assert collection.push(c, progress=False).added == 1  # takes the points over
    shutil.copytree(tmp_path / "c.idx", tmp_path / "b.idx")  # a copy of the live, moved index
    b = ImageIndex(tmp_path / "b.idx")
    b.update(_photos(tmp_path / "theirs", ["yellow"]), FakeModel(), progress=False)
    with pytest.raises(PolymodalError, match="one was copied from the other"):
        collection.push(b, progress=False)
