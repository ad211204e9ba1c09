"""Review of the commit-as-you-go index update (store.py): cases its own tests (test_index_resume.py) missed."""

from __future__ import annotations

import io
import itertools
import os
import sqlite3
from pathlib import Path

import faiss
import pytest
from PIL import Image

import test_index_resume
from polymodal.index import ImageIndex
from test_index import COLOURS, FakeModel, top
from test_index_resume import Reading, StopsAfter

built = test_index_resume.built  # its fixture: red, green, blue indexed; cyan, magenta, white, yellow painted only


def faiss_ids(index: ImageIndex) -> list[int]:
    stored = faiss.read_index(str(index.faiss_path))  # kept alive while its id_map is read
    return sorted(faiss.vector_to_array(stored.id_map).tolist())


def table_ids(index: ImageIndex) -> list[int]:
    with sqlite3.connect(index.sqlite_path) as con:
        return [i for (i,) in con.execute("SELECT id FROM images ORDER BY id")]


def generation(index: ImageIndex) -> int:
    with sqlite3.connect(index.sqlite_path) as con:
        return int(con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


@pytest.fixture
def indexed(built) -> tuple[ImageIndex, Path]:
    """test_index_resume's folder, all 7 images indexed."""
    index, photos = built
    index.update(photos, FakeModel(), progress=False)
    return index, photos


@pytest.mark.parametrize("commit_every_s", [None, 0])
def test_a_changed_file_that_now_fails_bumps_the_generation_and_rewrites_the_vectors(indexed, commit_every_s) -> None:
    # Its old row leaves (as before this change) and nothing else changes: readers that cached this generation's
    # vectors must notice, and vectors.faiss must match the table again.
    index, photos = indexed
    reader = ImageIndex(index.db)
    assert len(reader.search_text(FakeModel(), "green", k=2)) == 2  # caches the vectors of this generation
    before = generation(index)
    (photos / "green.png").write_text("now corrupt")  # another size: re-read, fails to decode
    report = index.update(photos, FakeModel(), progress=False, commit_every_s=commit_every_s)
    assert [Path(p).name for p, _ in report.skipped] == ["green.png"] and len(index) == 6
    assert generation(index) > before
    assert faiss_ids(index) == table_ids(index)
    assert len(reader.search_text(FakeModel(), "green", k=2)) == 2  # not 1: a stale id would be filtered out


def test_a_file_that_vanished_while_being_embedded_is_not_remembered_as_failed(built) -> None:
    # e.g. moved to the trash and restored: the same size and mtime, so a remembered failure would hide it for good
    index, photos = built
    cyan = photos / "cyan.png"  # not indexed yet
    away = photos.parent / "cyan.png"

    class MovesItAway(FakeModel):
        def encode_image(self, images, **kwargs):
            if cyan.exists():
                cyan.rename(away)
            return super().encode_image(images, **kwargs)

    report = index.update(photos, MovesItAway(), progress=False)
    assert [Path(p).name for p, _ in report.skipped] == ["cyan.png"]
    away.rename(cyan)
    again = index.update(photos, FakeModel(), progress=False)
    assert (again.added, again.skipped) == (1, [])


def failed_files(index: ImageIndex) -> dict[str, tuple[int, int]]:
    with sqlite3.connect(index.sqlite_path) as con:
        return {p: (s, m) for p, s, m in con.execute("SELECT path, size, mtime_ns FROM failures")}


def test_a_failed_file_changed_without_a_new_size_is_read_again_and_remembered_again(built) -> None:
    index, photos = built
    bad = photos / "bad.png"
    bad.write_text("not a PNG")
    index.update(photos, FakeModel(), progress=False)
    bad.write_text("NOT a png")  # same size
    mtime = bad.stat().st_mtime + 10
    os.utime(bad, (mtime, mtime))
    model = Reading()
    index.update(photos, model, progress=False)
    assert model.read == ["bad.png"]  # its mtime changed: looked at again
    assert failed_files(index) == {str(bad): (bad.stat().st_size, bad.stat().st_mtime_ns)}  # the new state
    model = Reading()
    index.update(photos, model, progress=False)
    assert model.read == []


def test_add_remembers_failures_as_update_does(built) -> None:
    index, photos = built
    from_folder = photos / "bad.png"
    from_folder.write_text("not a PNG")
    index.update(photos, FakeModel(), progress=False)
    elsewhere = photos.parent / "other" / "bad.png"
    elsewhere.parent.mkdir()
    elsewhere.write_text("not a PNG either")

    model = Reading()
    report = index.add([from_folder, elsewhere], model, progress=False)
    assert model.read == ["bad.png"]  # only the new one: the folder's failure is remembered
    assert [("unchanged since" in why) for _, why in report.skipped] == [True, False]
    model = Reading()
    report = index.add([elsewhere], model, progress=False)
    assert model.read == [] and "unchanged since" in report.skipped[0][1]


class Clock:
    """time.monotonic for the store, advancing `step` seconds per call."""

    def __init__(self, step: float):
        self.ticks = itertools.count(step=step)

    def monotonic(self) -> float:
        return next(self.ticks)


def test_commits_come_commit_every_s_apart_not_every_batch_once_the_first_is_due(built, monkeypatch) -> None:
    from polymodal.index import store

    index, photos = built
    monkeypatch.setattr(store, "time", Clock(40))  # batches end at 40, 80 (commit), 160, ... seconds
    with pytest.raises(KeyboardInterrupt) as raised:
        index.update(photos, StopsAfter(3), progress=False, batch_size=1, commit_every_s=60)
    assert raised.value.index_progress == (2, 4) and len(index) == 5  # the third batch was not committed


def test_readers_never_write_an_index_from_before_the_failures_table(built) -> None:
    # A read-only copy (or one another user owns) must stay searchable: only updates make the table.
    index, _ = built
    with sqlite3.connect(index.sqlite_path) as con:
        con.execute("DROP TABLE failures")
    reader = ImageIndex(index.db)
    assert reader.info()["count"] == 3 and len(reader.search_text(FakeModel(), "red", k=3)) == 3
    with sqlite3.connect(index.sqlite_path) as con:
        assert con.execute("SELECT 1 FROM sqlite_master WHERE name = 'failures'").fetchone() is None


class InterruptedAfterCommit:
    """A connection that is interrupted just after a commit inside an update, before the next transaction begins."""

    def __init__(self, con: sqlite3.Connection):
        self.con, self.commits = con, 0

    def execute(self, sql: str, *args):
        if sql == "BEGIN IMMEDIATE" and self.commits:
            raise KeyboardInterrupt
        result = self.con.execute(sql, *args)
        self.commits += sql == "COMMIT"
        return result

    def __getattr__(self, name: str):
        return getattr(self.con, name)


def test_an_interrupt_between_commit_and_begin_keeps_the_commit(built, monkeypatch) -> None:
    index, photos = built
    connect = index._connect
    monkeypatch.setattr(index, "_connect", lambda: InterruptedAfterCommit(connect()))
    with pytest.raises(KeyboardInterrupt) as raised:  # not a "cannot rollback - no transaction is active"
        index.update(photos, FakeModel(), progress=False, batch_size=1, commit_every_s=0)
    assert raised.value.index_progress == (1, 4) and len(ImageIndex(index.db)) == 4
    monkeypatch.undo()
    report = index.update(photos, FakeModel(), progress=False)
    assert (report.added, report.unchanged) == (3, 4)


def test_a_file_changed_in_size_keeps_its_old_row_until_its_new_one_is_committed(built) -> None:
    # test_index_resume covers a same-size change (its sha256 is compared); a new size takes the other branch
    index, photos = built
    # cyan.png, not indexed yet, is embedded first, then committed
    green = photos / "green.png"
    size = green.stat().st_size
    Image.new("RGB", (32, 32), COLOURS["yellow"]).save(green)
    assert green.stat().st_size != size
    with pytest.raises(KeyboardInterrupt):
        index.update(photos, StopsAfter(1), progress=False, batch_size=1, commit_every_s=0)
    assert top(ImageIndex(index.db), "green") == "green.png" and len(index) == 4  # old vector, still valid
    report = index.update(photos, FakeModel(), progress=False)
    assert report.updated == 1 and top(ImageIndex(index.db), "yellow") == "green.png"


def test_a_failed_file_with_a_new_size_but_its_old_mtime_is_read_again(built) -> None:
    index, photos = built
    bad = photos / "bad.png"
    bad.write_text("not a PNG")
    index.update(photos, FakeModel(), progress=False)
    mtime_ns = bad.stat().st_mtime_ns
    bad.write_text("a longer text, still not a PNG")
    os.utime(bad, ns=(mtime_ns, mtime_ns))  # e.g. copied with its times kept
    model = Reading()
    index.update(photos, model, progress=False)
    assert model.read == ["bad.png"]


def test_commit_every_0_commits_every_batch_even_on_a_coarse_clock(built, monkeypatch) -> None:
    from polymodal.index import store

    index, photos = built
    monkeypatch.setattr(store, "time", Clock(0))  # e.g. a 15 ms clock and fast batches
    with pytest.raises(KeyboardInterrupt) as raised:
        index.update(photos, StopsAfter(3), progress=False, batch_size=1, commit_every_s=0)
    assert raised.value.index_progress == (3, 4) and len(index) == 6


def test_an_interrupt_after_the_last_commit_says_everything_was_saved(built, monkeypatch) -> None:
    index, photos = built

    def interrupted(vectors) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(index, "_save_vectors", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised:
        index.update(photos, FakeModel(), progress=False)
    assert raised.value.index_progress == (4, 4) and len(index) == 7


def test_a_big_upload_to_the_service_that_fails_midway_adds_nothing(built, monkeypatch) -> None:
    # The service deletes a failed upload's files, so no commit may come before the end (commit_every_s=None).
    from polymodal.index import store
    from polymodal.serve.service import Service

    index, _ = built
    service = Service(FakeModel(), index.db)
    service.model = StopsAfter(32, RuntimeError("model crashed"))  # after the first batch of 32
    monkeypatch.setattr(store, "time", Clock(61))
    pngs = []
    for i in range(40):  # 40 different images: the service adds the same bytes once
        png, image = io.BytesIO(), Image.new("RGB", (16, 16), COLOURS["cyan"])
        image.putpixel((0, 0), (i, 0, 0))
        image.save(png, "PNG")
        pngs.append(png.getvalue())
    service.start()
    try:
        with pytest.raises(RuntimeError):
            service.add_images([(f"{i}.png", data) for i, data in enumerate(pngs)])
    finally:
        service.close()
    assert len(ImageIndex(index.db)) == 3
