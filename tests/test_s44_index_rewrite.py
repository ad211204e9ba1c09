"""Re-embedding changed files: their old vectors leave FAISS in one removal, not once per batch (FAISS compacts the
whole index on each removal, so per batch a folder of changed files was quadratic), and none is left behind. Since
stop 47 the writer does no FAISS work per commit at all: the ids go to the table `removed`, and the one removal is the
replay when vectors.faiss is next written (delta.py)."""

from __future__ import annotations

import faiss

from polymodal.index import ImageIndex
from tests.test_index import FakeModel, _faiss_ids, _sqlite_ids, paint, top

COLOURS = ["red", "green", "blue", "yellow"]


def _count_removals(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = faiss.IndexIDMap2.remove_ids

    def counted(self, ids):
        calls.append(len(ids))
        return original(self, ids)

    monkeypatch.setattr(faiss.IndexIDMap2, "remove_ids", counted)
    return calls


def _changed_folder(tmp_path):
    folder = tmp_path / "photos"
    for i in range(12):
        paint(folder / f"{i:02d}.png", COLOURS[i % 4], mtime=1_000_000)
    index = ImageIndex(tmp_path / "db")
    index.update(folder, FakeModel(), progress=False, batch_size=4)
    for i in range(12):  # every photo repainted: each is re-embedded and its old row replaced
        paint(folder / f"{i:02d}.png", COLOURS[(i + 1) % 4], mtime=2_000_000)
    return index, folder


def test_changed_files_leave_faiss_in_one_removal(tmp_path, monkeypatch) -> None:
    index, folder = _changed_folder(tmp_path)
    calls = _count_removals(monkeypatch)
    report = index.update(folder, FakeModel(), progress=False, batch_size=4, commit_every_s=None)
    assert report.updated == 12
    assert calls == [12]  # three batches, one commit: one removal of all twelve old vectors
    assert _faiss_ids(index) == _sqlite_ids(index) and len(_sqlite_ids(index)) == 12
    assert top(index, "yellow") in {"02.png", "06.png", "10.png"}  # the new colour wins, not a stale vector


def test_commits_along_the_way_leave_faiss_alone_and_the_write_removes_once(tmp_path, monkeypatch) -> None:
    index, folder = _changed_folder(tmp_path)
    calls = _count_removals(monkeypatch)
    index.update(folder, FakeModel(), progress=False, batch_size=4, commit_every_s=0)  # a commit after each batch
    assert calls == [12]  # was [4, 4, 4]: one compaction per commit
    assert _faiss_ids(index) == _sqlite_ids(index) and len(_sqlite_ids(index)) == 12
    assert ImageIndex(index.db).search_text(FakeModel(), "yellow", k=3)  # a fresh reader agrees with the file
