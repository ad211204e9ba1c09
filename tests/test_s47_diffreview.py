"""Review of stop 47's diff (the vectors.faiss delta): error paths after a writer's commit."""

from __future__ import annotations

import logging
import sqlite3

from polymodal.index import ImageIndex, delta, store
from tests.test_index import FakeModel, _faiss_ids, _sqlite_ids, built, paint, photos, top  # noqa: F401 (fixtures)


def test_a_disk_full_after_the_merge_wrote_the_file_does_not_fail_the_committed_update(built, monkeypatch,
                                                                                        caplog) -> None:
    """The merge's bookkeeping (vectors_top_id, forgetting `removed`) is a second transaction after the update's
    commit and the file's write. A disk that filled up in between raised sqlite3.OperationalError out of add()
    (a traceback from the CLI, a 500 from `serve`) for an upload that was saved."""
    index, photos = built

    def full(*_):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(delta, "merged", full)  # repro/full_disk_merge.py fills a real tmpfs at that point
    with caplog.at_level(logging.WARNING, logger=store.__name__):
        report = index.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)  # 1 of 4: merges
    assert report.added == 1 and "could not record the write" in caplog.text
    assert _faiss_ids(index) == _sqlite_ids(index)  # the file was written
    assert top(ImageIndex(index.db), "white") == "white.png"
    monkeypatch.undo()
    assert index.remove([photos / "red.png"]) == 1  # the next commit merges and records it
    assert _faiss_ids(index) == _sqlite_ids(index) and top(ImageIndex(index.db), "white") == "white.png"


def test_a_writer_that_cannot_write_the_file_says_searches_replay_it(built, monkeypatch, caplog) -> None:
    """The file left behind is brought up to date from meta.sqlite on open, not rebuilt: the warning said
    "it will be rebuilt on next open"."""
    index, photos = built
    monkeypatch.setattr(ImageIndex, "_write_vectors", lambda self, vectors: (_ for _ in ()).throw(OSError(28, "full")))
    with caplog.at_level(logging.WARNING, logger=store.__name__):
        assert index.remove([photos / "red.png"]) == 1
    assert "searches take what it lacks from meta.sqlite" in caplog.text and "rebuilt" not in caplog.text
    monkeypatch.undo()
    rebuilds = []
    real = store.rebuild
    monkeypatch.setattr(store, "rebuild", lambda *a: rebuilds.append(1) or real(*a))
    assert top(ImageIndex(index.db), "green") == "green.png" and rebuilds == []


def test_a_search_begun_just_before_a_commit_reads_again_instead_of_loading_an_older_copy(built, monkeypatch) -> None:
    """Its snapshot is older than the cache the writer has just brought forward: it loaded the file for the older
    state (1 GB at 1M photos) and put that in place of the newer cache."""
    from contextlib import contextmanager

    index, photos = built
    top(index, "red")
    early = ImageIndex(index.db)._reading()
    stale = early.__enter__()  # a read begun before the commit below
    index.add([paint(photos / "white.png", "white")], FakeModel(), progress=False)
    newer, loads, real_reading = index._cache, [], index._reading
    calls = iter([stale])

    @contextmanager
    def reading():
        first = next(calls, None)
        if first is not None:
            yield first
        else:
            with real_reading() as current:
                yield current

    monkeypatch.setattr(index, "_reading", reading)
    real_load = index._load_vectors
    monkeypatch.setattr(index, "_load_vectors", lambda *a: loads.append(1) or real_load(*a))
    hits = index.search(FakeModel().encode_text(["white"]), k=1)[0]  # (search_text reads once more, for the model)
    assert hits[0].path.endswith("white.png")
    assert loads == [] and index._cache is newer and next(calls, None) is None  # the stale read was used, and left
    early.__exit__(None, None, None)


def test_searching_the_rows_beside_the_index_holds_no_queries_by_rows_matrix() -> None:
    """Many queries (from Python) against the rows kept beside the FAISS index: their whole score matrix was held
    (about 4 GB for 5,000 queries beside 50k rows at 1M photos); it is scanned in blocks now, with the same answer."""
    import tracemalloc

    import faiss
    import numpy as np

    from polymodal.index.snapshot import Snapshot

    rng = np.random.default_rng(0)
    base, recent = rng.standard_normal((50, 8)).astype(np.float32), rng.standard_normal((5000, 8)).astype(np.float32)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    index.add_with_ids(base, np.arange(1, 51))
    snap = Snapshot(("u", 1, (0, 0)), index, 5050, np.arange(51, 5051), recent)
    q = rng.standard_normal((2000, 8)).astype(np.float32)
    tracemalloc.start()
    scores, ids = snap.search(q, 5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10e6  # the score matrix alone is 2,000 x 5,000 x 4 bytes = 40 MB
    brute = q @ np.concatenate([base, recent]).T
    want = np.argsort(-brute, axis=1, kind="stable")[:, :5] + 1
    assert (ids == want).all() and np.allclose(scores, np.take_along_axis(brute, want - 1, 1), atol=1e-5)
