"""A full disk in the middle of real work (stop 50): SQLite's "database or disk is full" / "disk I/O error" was a
traceback, or "not a readable index ... use a new --db"; a full disk made an intact index unsearchable (SQLite could
not make the -shm file a WAL reader needs); ENOSPC from a checkpoint, an --out file or an ONNX graph named no file;
a server upload on a full disk was a bare 500. The disk is simulated: the failing call raises what it raises there."""

import errno
import sqlite3

import pytest

from polymodal import cli
from polymodal.cache import atomic_write_bytes
from polymodal.index import ImageIndex
from polymodal.index import store
from test_index import paint

FULL = sqlite3.OperationalError("database or disk is full")


@pytest.fixture
def index_of_two(lite, tmp_path):
    """An index (own folder, not the shared gallery's) of two photos, and the texts of its answers to a query."""
    photos = tmp_path / "photos"
    paint(photos / "red.png", "red")
    paint(photos / "green.png", "green")
    db = tmp_path / "db"
    ImageIndex(db).update(photos, lite, progress=False)
    return photos, db, _answers(lite, db)


def _answers(lite, db):
    return [(h.path, round(h.score, 6)) for h in ImageIndex(db).search_text(lite, "a red square", k=5)]


def test_index_update_on_a_full_disk_is_one_line_and_leaves_the_index_as_it_was(index_of_two, lite, monkeypatch,
                                                                                  capsys):
    photos, db, before = index_of_two
    paint(photos / "blue.png", "blue")

    def full(*args, **kwargs):
        raise FULL

    monkeypatch.setattr(store, "_touch", full)  # the transaction's last write fails as a full disk's does
    assert cli.main(["index", str(photos), "--db", str(db), "--json"]) == 2  # --json: no progress bar
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "No space left on device" in err and str(db / "meta.sqlite") in err
    monkeypatch.undo()
    assert _answers(lite, db) == before and len(ImageIndex(db)) == 2


def test_a_full_disk_is_not_called_a_damaged_index(tmp_path):
    """_meta() turned any sqlite3.DatabaseError into "not a readable index; use a new --db": advice to throw the
    index away for a full disk. An I/O error on a disk with no room left is the full disk it is."""
    err = store._disk_error(sqlite3.OperationalError("database or disk is full"), tmp_path / "meta.sqlite")
    assert err.errno == errno.ENOSPC and err.filename == str(tmp_path / "meta.sqlite")
    assert store._disk_error(sqlite3.DatabaseError("file is not a database"), tmp_path / "meta.sqlite") is None


def test_an_index_on_a_full_disk_still_searches(index_of_two, lite, monkeypatch):
    """SQLite needs room for a WAL reader's -shm file; without it the first read is "disk I/O error". With an empty
    -wal (nothing committed beyond meta.sqlite) the file alone is the index: searches go on."""
    _, db, before = index_of_two

    class NoRoomForShm:
        def execute(self, *args):
            raise sqlite3.OperationalError("disk I/O error")

        def close(self):
            pass

    monkeypatch.setattr(ImageIndex, "_connect", lambda self: NoRoomForShm())
    assert _answers(lite, db) == before


def test_a_failed_atomic_write_names_its_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    """A checkpoint, an --out file: f.write's ENOSPC has no file name, so the CLI's line said "No space left on
    device" and not where."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the last good checkpoint")

    def full(fd, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("polymodal.cache.os.fsync", full)
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(path, b"x" * 100)
    assert caught.value.filename == str(path)
    assert path.read_bytes() == b"the last good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_an_upload_on_a_full_disk_is_a_507_and_the_index_serves_on(index_of_two, lite, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    photos, db, _ = index_of_two
    with TestClient(create_app(lite, str(db)), base_url="http://localhost") as client:
        before = client.post("/v1/search", json={"text": "a red square", "k": 5}).json()["hits"]

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(db / "meta.sqlite"))

        monkeypatch.setattr(ImageIndex, "update_folders", full)
        r = client.post("/v1/index", files=[("image", ("blue.png", paint(photos / "blue.png", "blue").read_bytes(),
                                                        "image/png"))])
        assert r.status_code == 507 and "disk is full" in r.json()["error"]
        assert "507" in client.get("/openapi.json").json()["paths"]["/v1/index"]["post"]["responses"]
        assert client.post("/v1/search", json={"text": "a red square", "k": 5}).json()["hits"] == before
        assert not [p for p in (db / "uploads").rglob("*") if p.is_file()]  # the staged upload went with the add


def test_a_full_cache_disk_says_to_free_space_not_to_find_a_writable_folder(tmp_path, monkeypatch, caplog):
    """The one warning for a cache that cannot be written said "set POLYMODAL_CACHE to a writable folder" on a full
    disk too, where the folder is writable."""
    import errno
    import logging

    from polymodal import cache

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_UNWRITABLE_WARNED", set())

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "atomic_write_bytes", full)
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        assert cache.write_cache_bytes(tmp_path / "cache" / "x.npy", b"1") is False
    assert "free some space there, or set POLYMODAL_CACHE to a folder on another disk" in caplog.text
