"""The suite's shared fixtures that save time (helper suitetime, stop 56): `db` is a copy of one index built per
worker, and `young_heap` makes gc.collect() scan only what the test made; both must leave the tests' checks as
they were."""

import gc
import sqlite3
import weakref


def _rows(path):
    con = sqlite3.connect(path / "meta.sqlite")
    try:
        uid = con.execute("SELECT value FROM meta WHERE key = 'uid'").fetchone()[0]
        return uid, con.execute("SELECT path, sha256, vector FROM images ORDER BY path").fetchall()
    finally:
        con.close()


def test_each_modules_db_is_a_copy_of_the_built_index_with_a_uid_of_its_own(db, _built_db):
    from polymodal.index import ImageIndex

    uid, rows = _rows(db)
    built_uid, built_rows = _rows(_built_db)
    assert db != _built_db and uid != built_uid and rows == built_rows and len(rows) == 15
    assert not (db / "meta.sqlite-wal").exists()  # the uid's write left no journal beside a fresh index's files
    assert len(ImageIndex(db)) == 15


def test_a_young_heap_still_collects_the_cycles_the_test_made(young_heap):
    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    assert gc.get_freeze_count() > 0 and gone() is not None
    gc.collect()
    assert gone() is None
