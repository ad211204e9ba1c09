"""A server's index vectors on 2 MB pages (stop 48, polymodal/index/pages.py): the kernel is asked where it can
move them, the vectors stay as they were, and only an index opened for searching on (huge_pages=True, as `serve`
opens it) asks, once for each FAISS index it loads."""

import os
import shutil
import sys
import threading

import faiss
import numpy as np

from polymodal.index import ImageIndex, pages


def _kernel_can_move() -> bool:
    """Linux 6.1+ (MADV_COLLAPSE) with transparent huge pages not switched off."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return False
    except OSError:
        return False
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 1)


def _huge_kb_at(address: int) -> int:
    """AnonHugePages (kB) of the mapping holding ``address``: the vectors' own, whatever else the process holds on
    2 MB pages (a test process has other tests' arrays there, and glibc may place the vectors in one of them)."""
    holds = False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(" ", 1)[0]
            if "-" in first and ":" not in first:  # a mapping's header line: "start-end perms ..."
                start, end = (int(x, 16) for x in first.split("-"))
                holds = start <= address < end
            elif holds and line.startswith("AnonHugePages"):
                return int(line.split()[1])
    return 0


def _flat(rows: int, dim: int = 256):
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index.add_with_ids(np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32), np.arange(rows) + 1)
    return index


def test_a_large_index_moves_onto_huge_pages_and_answers_the_same():
    index = _flat(24_000)  # 23 MB of vectors, past pages.MIN_BYTES
    q = np.random.default_rng(1).standard_normal((3, 256), dtype=np.float32)
    before = index.search(q, 5)
    moved = pages.advise_huge_pages(index)
    assert moved == _kernel_can_move()
    if moved:  # the vectors' mapping holds at least 8 MB on 2 MB pages
        assert _huge_kb_at(pages.vectors_of(index)[0] + (12 << 20)) >= 8 << 10
    for got, want in zip(index.search(q, 5), before):
        np.testing.assert_array_equal(got, want)


def test_a_small_index_is_left_as_it_is():
    assert pages.vectors_of(_flat(100))[1] == 100 * 256 * 4
    assert not pages.advise_huge_pages(_flat(100))
    assert not pages.advise_huge_pages(faiss.IndexFlatIP(8))  # empty: nothing to move


def test_an_index_opened_to_search_on_asks_once_for_each_faiss_index(db, lite, tmp_path, monkeypatch):
    from polymodal.index import delta, snapshot, store

    asked, wanted, done = [], [], threading.Event()

    def record(index, still_wanted):
        asked.append(index)
        wanted.append(still_wanted)
        done.set()
        return True

    monkeypatch.setattr(store, "advise_huge_pages", record)
    monkeypatch.setattr(delta, "MERGE_FRACTION", 10.0)  # the writer leaves the file: the server catches up
    path = tmp_path / "db"
    shutil.copytree(db, path)
    q = lite.encode_text(["a cat"])
    ImageIndex(path).search(q, 3)
    assert asked == []  # a one-shot search (the CLI) does not pay for the move
    served = ImageIndex(path, huge_pages=True)
    first = served.search(q, 3)
    assert done.wait(10) and len(asked) == 1 and asked[0] is served._cache.index
    served.search(q, 3)
    assert len(asked) == 1  # the same vectors: asked once
    gone = first[0][0].id
    ImageIndex(path).remove_ids([gone])  # another process removes a row the cached index holds: hidden, not copied
    assert gone not in [h.id for h in served.search(q, 3)[0]] and len(asked) == 1
    monkeypatch.setattr(snapshot, "HIDE_AT_MOST", 0)  # past the limit, one copy compacts them: a new index to move
    ImageIndex(path).remove_ids([first[0][1].id])
    done.clear()
    assert gone not in [h.id for h in served.search(q, 3)[0]]
    assert done.wait(10) and len(asked) == 2 and asked[1] is served._cache.index and asked[1] is not asked[0]
    # the replaced index's move stops (it held a second copy of the vectors on); the new one's goes on
    assert not wanted[0]() and wanted[1]()


def test_the_server_opens_its_index_to_search_on(db):
    from polymodal.serve.service import open_index

    assert open_index(db).huge_pages


def test_the_benchmark_times_both_copies(tmp_path, capsys):
    from test_benchmarks_run import run_benchmark

    moved, *copies = run_benchmark("index_huge_pages", ["--rows", 20_000, "--queries", 3, "--keep", tmp_path], capsys)
    assert moved["rows"] == 20_000 and moved["moved"] == _kernel_can_move()
    assert [c["copy"] for c in copies] == ["as_read", "huge_pages", "clone_of_as_read"]
    assert all(c["query_ms_median"] > 0 for c in copies)
