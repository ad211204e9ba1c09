"""Review of the vectors.faiss delta (s47, delta.py): found by a stress run and crash-point scripts."""

from __future__ import annotations

import pytest

from polymodal.index import ImageIndex
from tests.test_index import FakeModel, _faiss_ids, _sqlite_ids, built, paint, photos  # noqa: F401 (fixtures)


def test_a_file_written_back_by_a_reader_is_not_written_again_by_every_next_reader(built, monkeypatch) -> None:
    """An update interrupted after a commit that removed many rows leaves the file far behind; the first reader
    writes it back. The ids the file no longer holds stay recorded in `removed` until the writer's next merge, and
    were counted as the next readers' delta too: each fresh reader (each `polymodal search`) rewrote the whole file."""
    index, photos = built
    (photos / "red.png").unlink()
    (photos / "green.png").unlink()
    paint(photos / "white.png", "white")
    paint(photos / "yellow.png", "yellow")
    with pytest.raises(RuntimeError, match="model crashed"):  # the first batch's commit (2 rows out, 1 in) stays
        index.update(photos, FakeModel(fail_after=1), progress=False, batch_size=1, commit_every_s=0)
    assert len(_faiss_ids(index)) == 3 and len(_sqlite_ids(index)) == 2
    writes = []
    real = ImageIndex._write_vectors
    monkeypatch.setattr(ImageIndex, "_write_vectors", lambda self, vectors: writes.append(1) or real(self, vectors))
    for _ in range(3):  # three searches from new processes, no writer in between
        assert len(ImageIndex(index.db).search_text(FakeModel(), "white", k=10)) == 2
    assert _faiss_ids(index) == _sqlite_ids(index)
    assert len(writes) == 1  # was 3: the ids in `removed` still counted as a delta of 2 rows for 2


def _diverged_copy(built, tmp_path):
    """A served index and a copy of it, each written to since (id 4: white.png here, cyan.png there; the copy a
    generation further). -> (the server, with its cache of the index, the copy's folder)"""
    import shutil

    index, photos = built
    server = ImageIndex(index.db)
    server.search_text(FakeModel(), "red", k=1)
    shutil.copytree(index.db, tmp_path / "copy")
    server.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)
    elsewhere = ImageIndex(tmp_path / "copy")
    elsewhere.add([paint(photos / "cyan.png", "cyan")], FakeModel(), progress=False)
    elsewhere.add([paint(photos / "magenta.png", "magenta")], FakeModel(), progress=False)
    return server, tmp_path / "copy"


def _finds_cyan_itself(server) -> bool:
    from pathlib import Path

    hit = server.search_text(FakeModel(), "cyan", k=1)[0]
    return Path(hit.path).name == "cyan.png" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_a_folder_swapped_for_a_copy_written_on_separately_is_read_anew(built, tmp_path) -> None:
    """A live process's cache is caught up only from its own meta.sqlite. A copy of the folder that was updated on its
    own (a backup put back, then indexed into) reuses ids for other photos: caught up from it, id 4 kept the vector
    of the photo the process had added as id 4."""
    server, copy = _diverged_copy(built, tmp_path)
    server.db.rename(tmp_path / "old")
    copy.rename(server.db)
    assert _finds_cyan_itself(server)


def test_removing_a_row_kept_beside_the_cache_copies_nothing(built, monkeypatch) -> None:
    """A served upload deleted before the next merge: its row was beside the FAISS index, yet the whole index was
    copied to remove it (126 ms at 100k photos, against microseconds)."""
    import faiss

    from polymodal.index import delta

    index, photos = built
    monkeypatch.setattr(delta, "MERGE_FRACTION", 10.0)
    server = ImageIndex(index.db)
    server.search_text(FakeModel(), "red", k=1)
    server.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)
    base = server._cache.index
    copies = []
    real = faiss.clone_index
    monkeypatch.setattr(faiss, "clone_index", lambda i: copies.append(1) or real(i))
    server.remove([photos / "white.png"])
    assert copies == [] and server._cache.index is base and len(server._cache.recent_ids) == 0
    assert "white.png" not in {h.path.rsplit("/", 1)[-1] for h in server.search_text(FakeModel(), "white", k=10)}


def test_a_copy_written_over_the_index_in_place_is_read_anew(built, tmp_path) -> None:
    """`cp -a backup/. db/` over a folder a server has open (same meta.sqlite file): the backup, written to since, has
    the server's generations with other photos under the same ids. Each generation's token tells the histories apart
    (before, the server brought its cache forward from the copy and kept one photo's vector under another's id)."""
    server, copy = _diverged_copy(built, tmp_path)
    inode = (server.db / "meta.sqlite").stat().st_ino
    for name in ("meta.sqlite", "vectors.faiss"):
        (server.db / name).write_bytes((copy / name).read_bytes())  # in place: the same inode
    assert (server.db / "meta.sqlite").stat().st_ino == inode
    assert _finds_cyan_itself(server)
