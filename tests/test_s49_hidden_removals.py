"""A removal of a row a cached FAISS index holds hides its id instead of copying the index (stop 49,
polymodal/index/snapshot.py): answers stay a fresh reader's, and one copy compacts them past HIDE_AT_MOST."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from polymodal.index import ImageIndex, delta, snapshot
from polymodal.index.snapshot import Snapshot
from tests.test_index import FakeModel, built, paint, photos  # noqa: F401 (fixtures)


def _brute(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[list[int]]:
    order = np.argsort(-(q @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[order].tolist()


@pytest.mark.parametrize("k", [1, 3, 20, 45])
def test_a_snapshot_with_hidden_ids_ranks_as_one_without_them(k) -> None:
    rng = np.random.default_rng(k)
    vectors = rng.standard_normal((50, 16)).astype(np.float32)
    ids = np.arange(1, 51, dtype=np.int64)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    index.add_with_ids(vectors[:40], ids[:40])
    q = rng.standard_normal((6, 16)).astype(np.float32)
    hidden = np.unique(np.concatenate([np.asarray(_brute(vectors[:40], ids[:40], q, 3)).ravel(), [40]]))  # the best
    snap = Snapshot(("u", 1, (0, 0)), index, 40, ids[40:], vectors[40:], hidden)
    keep = ~np.isin(ids, hidden)
    assert snap.ntotal == keep.sum()
    scores, got = snap.search(q, min(k, snap.ntotal))
    assert got.tolist() == _brute(vectors[keep], ids[keep], q, min(k, snap.ntotal))
    assert np.isfinite(scores).all()
    single = snap.single()  # what vectors.faiss would hold: without them, the index itself untouched
    assert sorted(faiss.vector_to_array(single.id_map).tolist()) == ids[keep].tolist() and index.ntotal == 40


def test_a_served_removal_copies_nothing_until_the_hidden_ids_pile_up(built, monkeypatch) -> None:
    index, photos = built
    monkeypatch.setattr(delta, "MERGE_FRACTION", 0.0)
    index.add([paint(photos / f"{c}.png", c) for c in ("white", "cyan", "magenta")], FakeModel(), progress=False)
    monkeypatch.setattr(delta, "MERGE_FRACTION", 10.0)  # the file holds all 6 rows, and is left: caches catch up
    server = ImageIndex(index.db)
    server.search_text(FakeModel(), "red", k=1)
    base, copies, real = server._cache.index, [], faiss.clone_index
    monkeypatch.setattr(faiss, "clone_index", lambda i: copies.append(1) or real(i))
    monkeypatch.setattr(snapshot, "HIDE_AT_MOST", 2)
    server.remove([photos / "red.png"])
    ImageIndex(index.db).remove([photos / "cyan.png"])  # another process's removal: the same, at the next search
    server.search_text(FakeModel(), "red", k=1)
    assert copies == [] and server._cache.index is base and len(server._cache.hidden) == 2
    for colour in ("red", "cyan", "white", "magenta"):
        ranked = [h.path for h in server.search_text(FakeModel(), colour, k=6)]
        assert ranked == [h.path for h in ImageIndex(index.db).search_text(FakeModel(), colour, k=6)]
        assert len(ranked) == 4 and not {"red.png", "cyan.png"} & {p.rsplit("/", 1)[-1] for p in ranked}
    server.remove([photos / "white.png"])  # a third: past HIDE_AT_MOST, one copy compacts all three
    assert copies == [1] and server._cache.index is not base and len(server._cache.hidden) == 0
    assert server._cache.index.ntotal == 3 and base.ntotal == 6  # the index searches held is never changed


def test_the_hidden_ids_benchmark_runs(capsys) -> None:
    from test_benchmarks_run import run_benchmark

    lines = run_benchmark("index_hidden_ids", ["--rows", 2000, "--dim", 8, "--queries", 2, "--turns", 2], capsys)
    assert sorted((line["hidden"], line["k"]) for line in lines) == [(h, k) for h in (0, 10, 100, 1024)
                                                                      for k in (10, 1000)]
    assert all(line["ms_per_query"] > 0 and len(line["turns"]) == 2 for line in lines)
