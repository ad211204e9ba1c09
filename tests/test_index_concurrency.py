"""Writers and searches of one index in the same process: a search that rebuilt its FAISS cache writes it back under
vectors.lock, never the writer lock, so it never makes add/remove/update/prune fail with IndexBusy; a writer that
commits meanwhile waits for that write, then writes its own file over it. A second writer (another process) is
still refused at once. Fake model, tiny images."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

import polymodal.index.store as store
from polymodal.index import ImageIndex, IndexBusy
from test_index import FakeModel, paint
from test_index_apps_audit import faiss_ids, sqlite_ids

COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta", "white")


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    return [paint(tmp_path / "photos" / f"{c}.png", c) for c in COLOURS]


@pytest.fixture
def built(tmp_path: Path, photos: list[Path]) -> ImageIndex:
    index = ImageIndex(tmp_path / "db")
    index.update(tmp_path / "photos", FakeModel(), progress=False)
    return index


def test_a_writer_is_not_refused_while_a_search_writes_back_its_cache(built, photos, monkeypatch) -> None:
    built.faiss_path.unlink()  # the next search rebuilds the cache from the BLOBs and writes it back
    reader = ImageIndex(built.db)
    writing, release = threading.Event(), threading.Event()
    real_write = store.atomic_write_with

    def slow_write(path, write):  # the reader's write-back stays in progress until released
        if threading.current_thread() is searcher:
            writing.set()
            assert release.wait(10)
        real_write(path, write)

    monkeypatch.setattr(store, "atomic_write_with", slow_write)
    searcher = threading.Thread(target=reader.search_text, args=(FakeModel(), "red"))
    searcher.start()
    try:
        assert writing.wait(10)
        threading.Timer(0.3, release.set).start()  # the writer commits first, then waits for the write-back
        assert built.remove(photos[:2]) == 2  # was: IndexBusy "being written by another process"
    finally:
        release.set()
        searcher.join(10)
    # the reader's older rebuild landed first and the writer's file over it: the file matches the table
    assert faiss_ids(built) == sqlite_ids(built) and len(sqlite_ids(built)) == len(COLOURS) - 2


def test_writers_never_get_index_busy_while_threads_search(built, photos) -> None:
    model, stop, errors, searches = FakeModel(), threading.Event(), [], []
    other = ImageIndex(built.db)

    def search(index: ImageIndex) -> None:
        try:
            while not stop.is_set():
                searches.append(len(index.search_text(model, "red", k=3)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # two search the writer's own object (its cache), two another one (rebuilt and written back after every commit)
    threads = [threading.Thread(target=search, args=(index,)) for index in (built, built, other, other)]
    for t in threads:
        t.start()
    busy = 0
    try:
        deadline = time.monotonic() + 4
        for _ in range(40):  # before the fix, from a few to nearly all of these got IndexBusy
            try:
                built.remove(photos[:3])
                built.add(photos[:3], model, progress=False)
            except IndexBusy:
                busy += 1
            if time.monotonic() > deadline:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert busy == 0 and errors == [] and searches and set(searches) == {3}
    assert len(built) == len(COLOURS) and faiss_ids(built) == sqlite_ids(built)
    assert [h.path for h in ImageIndex(built.db).search_text(model, "red", k=1)] == [str(photos[0])]


def test_a_second_writer_process_is_still_refused_at_once(built, photos) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from filelock import FileLock\n"
         "with FileLock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()", str(built.lock_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for write in (lambda: built.add(photos[:1], FakeModel(), progress=False), lambda: built.remove(photos[:1]),
                      built.prune):
            start = time.monotonic()
            with pytest.raises(IndexBusy, match=r"being written by another process or thread \(lock file .*index\.lock\)"):
                write()
            assert time.monotonic() - start < 1  # no waiting: the CLI says so at once (one line, exit 2)
        assert built.search_text(FakeModel(), "red", k=1)  # readers need no lock
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert built.remove(photos[:1]) == 1


def test_a_writer_gives_up_on_a_stuck_write_back_and_the_file_is_rebuilt(built, photos, monkeypatch, caplog) -> None:
    monkeypatch.setattr(store, "SAVE_WAIT_S", 0.2)
    with FileLock(str(built.vectors_lock_path)), caplog.at_level(logging.WARNING, logger=store.__name__):
        assert built.remove(photos[:1]) == 1  # committed; only the FAISS file is left behind
    assert "searches take what it lacks from meta.sqlite" in caplog.text  # was "will be rebuilt": it is replayed
    assert len(faiss_ids(built)) == len(COLOURS)  # the old file
    fresh = ImageIndex(built.db)
    assert [Path(h.path).name for h in fresh.search_text(FakeModel(), "green", k=1)] == ["green.png"]
    assert faiss_ids(built) == sqlite_ids(built)  # the search brought it up to date and wrote it back


def test_an_empty_index_discarded_takes_its_vectors_lock_too(tmp_path) -> None:
    index = ImageIndex(tmp_path / "db")
    broken = paint(tmp_path / "photos" / "red.png", "red")
    broken.write_bytes(b"not an image")
    index.update(tmp_path / "photos", FakeModel(), progress=False)
    with FileLock(str(index.vectors_lock_path)):
        pass
    assert index.discard_if_empty() and not index.db.exists()
