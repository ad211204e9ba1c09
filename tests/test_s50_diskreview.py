"""A review of stop 50's full-disk reading (7f9223a): with no room for a -shm file, a reader opened the index as
immutable=1, which takes no lock, so a writer that found room meanwhile checkpointed into the pages being read (on a
4 MiB tmpfs: "database disk image is malformed" inside the read), and an index whose last commit was still in its
-wal could not be read at all. The disk is simulated as in test_s50_diskfull: the reader's first statement fails as
a full disk's does."""

import shutil
import sqlite3

import pytest

from polymodal.index import ImageIndex
from test_index import paint


class NoRoomForShm:
    """What a WAL connection on a full disk gives: SQLite fails to make the -shm file at the first statement."""

    def execute(self, *args):
        raise sqlite3.OperationalError("disk I/O error")

    def close(self):
        pass


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    paint(folder / "red.png", "red")
    paint(folder / "green.png", "green")
    return folder


def test_a_read_without_room_for_its_shm_keeps_writers_out(photos, lite, tmp_path, monkeypatch):
    db = tmp_path / "db"
    ImageIndex(db).update(photos, lite, progress=False)
    monkeypatch.setattr(ImageIndex, "_connect", lambda self: NoRoomForShm())
    with ImageIndex(db)._reading() as (con, meta):
        count = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        writer = sqlite3.connect(db / "meta.sqlite", timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):  # immutable=1: the commit went through
                writer.execute("BEGIN IMMEDIATE")
                writer.execute("UPDATE meta SET value = 'later' WHERE key = 'updated'")
                writer.execute("COMMIT")
        finally:
            writer.close()
        assert con.execute("SELECT COUNT(*) FROM images").fetchone()[0] == count == 2
        assert dict(con.execute("SELECT key, value FROM meta"))["updated"] == meta["updated"]


def test_a_commit_still_in_the_wal_is_searched_without_room_for_a_shm(photos, lite, tmp_path, monkeypatch):
    """A writer killed before its checkpoint leaves its last commit in meta.sqlite-wal; on a full disk the reader
    refused ("No space left on device") although the index was whole."""
    db = tmp_path / "db"
    ImageIndex(db).update(photos, lite, progress=False)
    paint(photos / "blue.png", "blue")
    keep = sqlite3.connect(db / "meta.sqlite")  # open: the update's close is not the last, so no checkpoint
    try:
        keep.execute("SELECT 1 FROM meta").fetchall()
        ImageIndex(db).update(photos, lite, progress=False)
        copy = shutil.copytree(db, tmp_path / "copy", ignore=shutil.ignore_patterns("*-shm", "*.lock"))
    finally:
        keep.close()
    assert (copy / "meta.sqlite-wal").stat().st_size > 0
    monkeypatch.setattr(ImageIndex, "_connect", lambda self: NoRoomForShm())
    hits = ImageIndex(copy).search_text(lite, "a blue square", k=5)
    assert sorted(h.path.rsplit("/", 1)[-1] for h in hits) == ["blue.png", "green.png", "red.png"]
