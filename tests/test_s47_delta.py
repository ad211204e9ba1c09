"""vectors.faiss may lag the table: a writer records its rows and deleted ids in SQLite and rewrites the file only once
the delta passes delta.MERGE_FRACTION of the rows; readers replay the delta (polymodal/index/delta.py). Most tests
set MERGE_FRACTION high, so that these tiny indexes keep a delta (at 5% every change of a 3-photo index merges)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import faiss
import pytest

from polymodal.index import ImageIndex, delta
from tests.test_index import FakeModel, _faiss_ids, _sqlite_ids, built, paint, photos, top  # noqa: F401 (fixtures)


@pytest.fixture
def lagging(monkeypatch):
    monkeypatch.setattr(delta, "MERGE_FRACTION", 10.0)  # never merge: the file stays as first written


def _names(index: ImageIndex, colour: str = "red") -> set[str]:
    return {Path(h.path).name for h in index.search_text(FakeModel(), colour, k=20)}


def _file_reads(monkeypatch) -> list[int]:
    reads: list[int] = []
    real = faiss.read_index
    monkeypatch.setattr(faiss, "read_index", lambda *a: reads.append(1) or real(*a))
    return reads


def _removed(index: ImageIndex) -> list[int]:
    with sqlite3.connect(index.sqlite_path) as con:
        return [r[0] for r in con.execute("SELECT id FROM removed ORDER BY id")]


def test_a_writer_neither_reads_nor_rewrites_the_file_while_the_delta_is_small(built, lagging, monkeypatch) -> None:
    index, photos = built
    inode, reads = index.faiss_path.stat().st_ino, _file_reads(monkeypatch)
    writer = ImageIndex(index.db)  # a new process's writer: no cache to catch up
    writer.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)
    assert writer.remove([photos / "red.png"]) == 1
    assert reads == [] and index.faiss_path.stat().st_ino == inode  # was: read and rewritten twice
    assert _faiss_ids(index) != _sqlite_ids(index)  # the file lags ...
    fresh, before = ImageIndex(index.db), len(reads)  # ... and a new reader replays the delta
    assert _names(fresh) == {"white.png", "green.png", "Blue.JPG"} and top(fresh, "white") == "white.png"
    assert len(reads) == before + 1 and index.faiss_path.stat().st_ino == inode  # a small delta is not written back


def test_the_writer_merges_once_the_delta_passes_the_fraction(built, monkeypatch) -> None:
    index, photos = built
    monkeypatch.setattr(delta, "MERGE_FRACTION", 0.5)  # 3 photos: a delta of 1 stays, 2 merges
    inode = index.faiss_path.stat().st_ino
    index.remove([photos / "red.png"])
    assert index.faiss_path.stat().st_ino == inode and len(_removed(index)) == 1
    index.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)
    assert index.faiss_path.stat().st_ino != inode  # rewritten: the delta was 2 for 3 rows
    assert _faiss_ids(index) == _sqlite_ids(index) and _removed(index) == []  # and the deleted ids forgotten
    assert _names(ImageIndex(index.db)) == {"white.png", "green.png", "Blue.JPG"}


def test_a_far_behind_file_is_written_back_by_a_reader(built, lagging, monkeypatch) -> None:
    index, photos = built
    for colour in ("cyan", "magenta", "white", "yellow"):
        paint(photos / f"{colour}.png", colour)
    index.update(photos, FakeModel(), progress=False)  # 4 new rows for a file of 3: not merged (MERGE_FRACTION 10)
    assert len(_faiss_ids(index)) == 3
    monkeypatch.setattr(delta, "MERGE_FRACTION", 0.05)
    reader = ImageIndex(index.db)
    assert top(reader, "cyan") == "cyan.png"
    assert _faiss_ids(index) == _sqlite_ids(index)  # a delta of 4 for 7 rows is more than 5%: written back


def test_a_process_cache_catches_up_from_sqlite_without_reading_the_file(built, lagging, monkeypatch) -> None:
    index, photos = built
    server = ImageIndex(index.db)
    assert top(server, "red") == "red.png"  # cached
    reads = _file_reads(monkeypatch)
    other = ImageIndex(index.db)  # another process adds and removes
    other.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)
    other.remove([photos / "red.png"])
    assert _names(server) == {"white.png", "green.png", "Blue.JPG"}
    assert reads == []  # the cache was copied and given the delta, not read again


def test_the_writers_own_cache_follows_its_commits(built, lagging, monkeypatch) -> None:
    index, photos = built
    assert top(index, "red") == "red.png"
    reads = _file_reads(monkeypatch)
    index.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)
    cached = index._cache.index
    assert top(index, "white") == "white.png" and index._cache.index is cached  # caught up by the writer itself
    assert reads == []


def test_deletions_the_file_does_not_know_of_make_it_rebuilt(built, lagging) -> None:
    """An older polymodal, or a hand-edit, deletes rows without recording them: the counts differ and the file is not
    trusted (its photo would otherwise still be found)."""
    index, photos = built
    with sqlite3.connect(index.sqlite_path, isolation_level=None) as con:
        con.execute("DELETE FROM images WHERE path LIKE '%red.png'")
        con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    assert _names(ImageIndex(index.db)) == {"green.png", "Blue.JPG"}
    assert _faiss_ids(index) == _sqlite_ids(index)  # rebuilt and written back


def test_an_older_file_after_its_deletions_were_forgotten_is_rebuilt(built, monkeypatch) -> None:
    """A backup of vectors.faiss put back after a merge forgot the ids it still holds: rebuilt, not trusted."""
    index, photos = built
    old = index.faiss_path.read_bytes()
    monkeypatch.setattr(delta, "MERGE_FRACTION", 0.0)  # every change merges and forgets its deleted ids
    index.remove([photos / "red.png"])
    assert _removed(index) == []
    index.faiss_path.write_bytes(old)
    assert _names(ImageIndex(index.db)) == {"green.png", "Blue.JPG"}


@pytest.mark.parametrize("change", ["add", "remove", "remove and add"])
def test_a_file_written_after_the_readers_snapshot_is_not_mixed_into_it(built, monkeypatch, change) -> None:
    """A writer merged after a reader's snapshot began: the new file holds rows the snapshot lacks (its top is above
    the snapshot's) or lacks rows the snapshot holds (the counts differ). Either way the reader rebuilds its
    snapshot."""
    index, photos = built
    monkeypatch.setattr(delta, "MERGE_FRACTION", 0.0)
    reader = ImageIndex(index.db)
    with reader._reading() as (con, meta):
        expected = _sqlite_ids(index)
        if "remove" in change:
            index.remove([photos / "green.png"])
        if "add" in change:
            index.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)
        assert _faiss_ids(index) != expected  # the file now holds the writer's state
        loaded, _ = reader._load_vectors(con, meta)
        assert sorted(faiss.vector_to_array(loaded.single().id_map).tolist()) == expected


def test_an_index_from_before_the_delta_gets_it_on_its_first_write(built, lagging) -> None:
    index, photos = built
    with sqlite3.connect(index.sqlite_path, isolation_level=None) as con:  # as older polymodal left it
        con.execute("DROP TABLE removed")
        con.execute("DELETE FROM meta WHERE key = ?", (delta.MERGED_TOP,))
    assert top(ImageIndex(index.db), "green") == "green.png"  # readers need no table `removed`
    inode = index.faiss_path.stat().st_ino
    index.remove([photos / "red.png"])
    assert index.faiss_path.stat().st_ino != inode  # no record of the file's top: written whole, once
    assert _faiss_ids(index) == _sqlite_ids(index)
    index.remove([photos / "green.png"])
    assert index.faiss_path.stat().st_ino != inode and len(_removed(index)) == 1  # from then on, a delta
    assert _names(ImageIndex(index.db)) == {"Blue.JPG"}


def test_changed_files_keep_one_row_each_through_commits_along_the_way(built, lagging) -> None:
    """An update that commits after each batch records each replaced row in its own commit's generation; a reader
    between two of them (here: after) sees every photo once, with its new vector."""
    index, photos = built
    for name, colour in (("red.png", "yellow"), ("green.png", "cyan"), ("sub/Blue.JPG", "magenta")):
        paint(photos / name, colour, mtime=(photos / name).stat().st_mtime + 10)
    assert index.update(photos, FakeModel(), progress=False, batch_size=1, commit_every_s=0).updated == 3
    with sqlite3.connect(index.sqlite_path) as con:
        generations = [r[0] for r in con.execute("SELECT generation FROM removed ORDER BY id")]
    assert len(set(generations)) == 3  # one commit each
    fresh = ImageIndex(index.db)
    assert [top(fresh, c) for c in ("yellow", "cyan", "magenta")] == ["red.png", "green.png", "Blue.JPG"]
    assert len(fresh.search_text(FakeModel(), "red", k=20)) == 3


def _ranked(index: ImageIndex, colour: str) -> list[tuple[str, float]]:
    return [(Path(h.path).name, round(h.score, 5)) for h in index.search_text(FakeModel(), colour, k=20)]


def test_a_cache_keeps_added_rows_beside_its_faiss_index_and_ranks_them_with_it(built, lagging) -> None:
    """Adds since the cache was made are searched beside it (no copy of the FAISS index per upload), and every
    answer ranks as a fresh reader's single index does."""
    index, photos = built
    server = ImageIndex(index.db)
    top(server, "red")
    base = server._cache.index
    for colour in ("white", "cyan", "magenta"):
        server.add([paint(photos / f"{colour}.png", colour)], FakeModel(), progress=False)
    assert server._cache.index is base and len(server._cache.recent_ids) == 3
    fresh = ImageIndex(index.db)
    for colour in ("red", "white", "cyan", "blue"):
        assert _ranked(server, colour) == _ranked(fresh, colour)
    assert [h.path for h in server.search_text(FakeModel(), "cyan", k=2)] == \
        [h.path for h in fresh.search_text(FakeModel(), "cyan", k=2)]  # k below the rows of either part
    server.remove([photos / "cyan.png"])  # a row beside: it just leaves
    assert server._cache.index is base and len(server._cache.recent_ids) == 2
    server.remove([photos / "red.png"])  # a row of the FAISS index: hidden from its searches, nothing copied
    assert server._cache.index is base and len(server._cache.recent_ids) == 2 and len(server._cache.hidden) == 1
    for colour in ("cyan", "red", "white"):
        assert _ranked(server, colour) == _ranked(ImageIndex(index.db), colour)
    assert not {"cyan.png", "red.png"} & {name for name, _ in _ranked(server, "cyan")}


def test_a_cache_folds_its_added_rows_in_once_they_pass_the_fraction(built, monkeypatch) -> None:
    index, photos = built
    monkeypatch.setattr(delta, "MERGE_FRACTION", 0.5)
    top(index, "red")
    base = index._cache.index
    index.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)  # 1 beside 3: kept beside
    assert index._cache.index is base and len(index._cache.recent_ids) == 1
    index.add([paint(photos / "cyan.png", "cyan")], FakeModel(), progress=False)  # 2 beside 3: folded in
    assert len(index._cache.recent_ids) == 0 and index._cache.index.ntotal == 5
    assert _faiss_ids(index) == [1, 2, 3]  # the file is the writer's own business: 2 behind 5 rows is not past 0.5
    assert _ranked(index, "white") == _ranked(ImageIndex(index.db), "white")


def test_a_new_reader_keeps_the_files_missing_rows_beside_it(built, lagging) -> None:
    """Added into the FAISS index read from the file, they made FAISS copy its whole buffer as it grew (2 GB held
    at 1M photos for one new row)."""
    index, photos = built
    index.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)
    fresh = ImageIndex(index.db)
    assert top(fresh, "white") == "white.png"
    assert fresh._cache.index.ntotal == 3 and fresh._cache.recent_ids.tolist() == [4]
