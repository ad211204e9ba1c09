"""Long index updates: work is committed as it goes (an interrupt keeps it, a re-run does the rest), files that
failed to decode are remembered until they change, and symlinked folders are reported instead of passed over."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex, scan_images
from test_index import COLOURS, FakeModel, paint, top

NEW = ("cyan", "magenta", "white", "yellow")  # sorted by name, so embedded in this order


class StopsAfter(FakeModel):
    """Raises `error` when asked for batch number `batches` + 1 (batch_size=1: one image per batch)."""

    def __init__(self, batches: int, error: BaseException = KeyboardInterrupt()):
        super().__init__()
        self.batches, self.error = batches, error

    def _image_batch(self, pixels):
        if self.embedded >= self.batches:
            raise self.error
        return super()._image_batch(pixels)


class Reading(FakeModel):
    """Records the names of the files it is asked to read."""

    def __init__(self):
        super().__init__()
        self.read: list[str] = []

    def encode_image(self, images, **kwargs):
        self.read += [Path(p).name for p in images]
        return super().encode_image(images, **kwargs)


@pytest.fixture
def built(tmp_path: Path) -> tuple[ImageIndex, Path]:
    photos = tmp_path / "photos"
    for colour in ("red", "green", "blue"):
        paint(photos / f"{colour}.png", colour)
    index = ImageIndex(tmp_path / "db")
    index.update(photos, FakeModel(), progress=False)
    for colour in NEW:
        paint(photos / f"{colour}.png", colour)
    return index, photos


def names(index: ImageIndex) -> list[str]:
    with sqlite3.connect(index.sqlite_path) as con:
        return sorted(Path(p).name for (p,) in con.execute("SELECT path FROM images"))


def assert_searches_consistently(index: ImageIndex) -> None:
    """Every stored image is found as its own nearest neighbour by a fresh reader, and nothing else is found."""
    reader = ImageIndex(index.db)
    stored = names(index)
    assert reader.info()["count"] == len(stored)
    for name in stored:
        colour = Path(name).stem
        if colour in COLOURS:
            assert top(reader, colour) == name
    assert sorted(Path(h.path).name for h in reader.search_text(FakeModel(), "red", k=100)) == stored


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("model crashed")])
def test_an_interrupted_update_keeps_what_it_committed_and_a_rerun_does_the_rest(built, error) -> None:
    index, photos = built
    with pytest.raises(type(error)) as raised:
        index.update(photos, StopsAfter(2, error), progress=False, batch_size=1, commit_every_s=0)
    assert raised.value.index_progress == (2, 4)  # what the CLI reports
    assert names(index) == ["blue.png", "cyan.png", "green.png", "magenta.png", "red.png"]
    assert_searches_consistently(index)

    model = FakeModel()
    report = index.update(photos, model, progress=False)
    assert (report.added, report.unchanged, model.embedded) == (2, 5, 2)  # only the rest
    assert_searches_consistently(index)


def test_one_transaction_when_asked_keeps_nothing_of_an_interrupted_update(built) -> None:
    index, photos = built
    with pytest.raises(KeyboardInterrupt):
        index.update(photos, StopsAfter(3), progress=False, batch_size=1, commit_every_s=None)
    assert names(index) == ["blue.png", "green.png", "red.png"]


def test_a_changed_file_keeps_its_old_row_until_its_new_one_is_committed(built) -> None:
    index, photos = built
    green = photos / "green.png"
    paint(green, "yellow", mtime=green.stat().st_mtime + 10)  # embedded second: after cyan.png
    with pytest.raises(KeyboardInterrupt):
        index.update(photos, StopsAfter(1), progress=False, batch_size=1, commit_every_s=0)
    assert top(ImageIndex(index.db), "green") == "green.png"  # the old vector, still valid
    with pytest.raises(KeyboardInterrupt):
        index.update(photos, StopsAfter(1), progress=False, batch_size=1, commit_every_s=0)  # green.png is next
    fresh = ImageIndex(index.db)
    assert names(index).count("green.png") == 1 and top(fresh, "yellow") == "green.png"
    assert top(fresh, "green") != "green.png"


def test_deleted_files_leave_in_the_first_commit(built) -> None:
    index, photos = built
    (photos / "blue.png").unlink()
    with pytest.raises(KeyboardInterrupt):
        index.update(photos, StopsAfter(1), progress=False, batch_size=1, commit_every_s=0)
    assert names(index) == ["cyan.png", "green.png", "red.png"]
    assert_searches_consistently(index)


def test_readers_see_each_commit_and_nothing_uncommitted(built) -> None:
    index, photos = built
    reader = ImageIndex(index.db)
    assert top(reader, "red") == "red.png"  # caches this generation's vectors
    seen = []

    class Watched(FakeModel):
        def _image_batch(self, pixels):
            seen.append(reader.info()["count"])
            if self.embedded:  # the image embedded just before is committed and searchable
                assert top(reader, NEW[self.embedded - 1]) == f"{NEW[self.embedded - 1]}.png"
            return super()._image_batch(pixels)

    index.update(photos, Watched(), progress=False, batch_size=1, commit_every_s=0)
    assert seen == [3, 4, 5, 6]
    assert reader.info()["count"] == 7 and top(reader, "yellow") == "yellow.png"


def test_a_file_that_failed_is_not_read_again_until_it_changes(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paint(photos / "red.png", "red")
    bad = photos / "bad.png"
    bad.write_text("not a PNG")
    index = ImageIndex(tmp_path / "db")
    first = index.update(photos, Reading(), progress=False)
    assert [Path(p).name for p, _ in first.skipped] == ["bad.png"]

    model = Reading()
    again = index.update(photos, model, progress=False)
    assert model.read == [] and again.unchanged == 1
    (path, reason), = again.skipped
    assert Path(path).name == "bad.png" and "not a readable image" in reason
    assert "unchanged since it failed on" in reason

    bad.write_text("still not a PNG, but changed")
    model = Reading()
    changed = index.update(photos, model, progress=False)
    assert "bad.png" in model.read and "unchanged since" not in changed.skipped[0][1]

    paint(bad, "blue")  # fixed
    fixed = index.update(photos, Reading(), progress=False)
    assert (fixed.added, fixed.skipped) == (1, []) and top(index, "blue") == "bad.png"
    with sqlite3.connect(index.sqlite_path) as con:
        assert con.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0


def test_a_deleted_file_that_failed_is_forgotten(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paint(photos / "red.png", "red")
    (photos / "bad.png").write_text("not a PNG")
    index = ImageIndex(tmp_path / "db")
    index.update(photos, FakeModel(), progress=False)
    (photos / "bad.png").unlink()
    index.update(photos, FakeModel(), progress=False)
    with sqlite3.connect(index.sqlite_path) as con:
        assert con.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0


def test_an_index_from_before_failures_were_remembered_still_works(built) -> None:
    index, photos = built
    with sqlite3.connect(index.sqlite_path) as con:
        con.execute("DROP TABLE failures")  # as the code before this feature made it
    assert top(ImageIndex(index.db), "red") == "red.png"
    (photos / "bad.png").write_text("not a PNG")
    index.update(photos, FakeModel(), progress=False)
    model = Reading()
    index.update(photos, model, progress=False)
    assert model.read == [] and len(index) == 7


def test_symlinked_folders_are_reported_not_followed(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paint(photos / "red.png", "red")
    paint(photos / "sub" / "green.png", "green")
    paint(tmp_path / "elsewhere" / "blue.png", "blue")
    try:
        (photos / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        (photos / "loop").symlink_to(photos, target_is_directory=True)
    except OSError as exc:
        pytest.skip(f"cannot make symlinks here: {exc}")
    files, skipped = scan_images(photos)
    assert [Path(f.path).name for f in files] == ["red.png", "green.png"]
    reasons = {Path(p).name: why for p, why in skipped}
    assert set(reasons) == {"out", "loop"}
    assert "not followed" in reasons["out"] and str((tmp_path / "elsewhere").resolve()) in reasons["out"]
    assert "indexed under its own path" in reasons["loop"]


def test_a_folder_with_only_a_linked_folder_says_so(tmp_path: Path) -> None:
    paint(tmp_path / "real" / "red.png", "red")
    (tmp_path / "photos").mkdir()
    try:
        (tmp_path / "photos" / "2023").symlink_to(tmp_path / "real", target_is_directory=True)
    except OSError as exc:
        pytest.skip(f"cannot make symlinks here: {exc}")
    with pytest.raises(PolymodalError, match=r"no images found .*2023: symlinked folder, not followed"):
        scan_images(tmp_path / "photos")


@pytest.mark.parametrize("bad", [-1, "60", float("nan"), True])
def test_a_bad_commit_interval_is_refused(built, bad) -> None:
    index, photos = built
    with pytest.raises(PolymodalError, match="commit_every_s must be"):
        index.update(photos, FakeModel(), progress=False, commit_every_s=bad)


def test_a_numpy_commit_interval_is_taken(built) -> None:
    import numpy as np

    index, photos = built
    assert index.update(photos, FakeModel(), progress=False, commit_every_s=np.float32(30)).added == len(NEW)


class MinuteClock:
    """time.monotonic for the store: a minute passes between calls, so every batch is committed."""

    def __init__(self):
        self.ticks = itertools.count(step=61)

    def monotonic(self) -> float:
        return next(self.ticks)


@pytest.mark.parametrize("word, code", [("interrupted", 130), ("terminated", 143)])  # Ctrl-C, SIGTERM
def test_the_index_command_says_what_an_interrupt_saved(built, capsys, monkeypatch, word, code) -> None:
    import polymodal
    from polymodal import cli
    from polymodal.index import store

    index, photos = built
    error = cli.Terminated() if word == "terminated" else KeyboardInterrupt()
    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: StopsAfter(3, error))
    monkeypatch.setattr(store, "time", MinuteClock())
    db = str(index.db)
    assert cli.main(["index", str(photos), "--db", db, "--batch-size", "1"]) == code
    err = capsys.readouterr().err  # the progress bar, then one line
    assert "Traceback" not in err and err.endswith("\n")
    assert err.splitlines()[-1] == (f"polymodal: {word}: 3 of 4 images to embed were saved to {db}; run the same "
                                    "command again to finish")
    assert len(index) == 6

    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: FakeModel())
    assert cli.main(["index", str(photos), "--db", db]) == 0
    assert "added 1, updated 0, removed 0, unchanged 6" in capsys.readouterr().out


def test_an_index_is_not_started_among_other_files(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paint(photos / "red.png", "red")
    with pytest.raises(PolymodalError, match="holding other files .*red.png.* and no index; pass a new or empty folder"):
        ImageIndex(photos).update(photos, FakeModel(), progress=False)  # --db naming the photo folder itself
    assert sorted(p.name for p in photos.iterdir()) == ["red.png"]  # nothing written among the photos
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_text("")
    assert ImageIndex(empty).update(photos, FakeModel(), progress=False).added == 1  # empty but for hidden files
    paint(empty / "later.png", "blue")  # an index folder, once made, may gain other files: still an index
    assert ImageIndex(empty).update(photos, FakeModel(), progress=False).unchanged == 1


def test_an_interrupt_during_the_second_folder_counts_the_first(built, tmp_path, capsys, monkeypatch) -> None:
    import polymodal
    from polymodal import cli
    from polymodal.index import store

    index, photos = built  # 4 new photos in `photos`, then 2 in `more`
    more = tmp_path / "more"
    for colour in ("red", "blue"):
        paint(more / f"{colour}.jpg", colour)  # not the bytes of photos/'s PNGs, whose vectors would be reused
    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: StopsAfter(5))
    monkeypatch.setattr(store, "time", MinuteClock())
    db = str(index.db)
    assert cli.main(["index", str(photos), str(more), "--db", db, "--batch-size", "1"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (f"polymodal: interrupted: 5 of 6 images to embed were saved "
                                                       f"to {db}; run the same command again to finish")
    assert len(index) == 3 + 5


def test_prune_drops_the_images_of_a_moved_folder(tmp_path, capsys, monkeypatch) -> None:
    import json

    import polymodal
    from polymodal import cli

    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: FakeModel())
    first, db = tmp_path / "first", str(tmp_path / "db")
    for colour in ("red", "green", "blue"):
        paint(first / f"{colour}.png", colour)
    assert cli.main(["index", str(first), "--db", db]) == 0
    index = ImageIndex(db)
    with sqlite3.connect(index.sqlite_path) as con:  # a remembered decode failure of a file that then vanishes
        con.execute("INSERT INTO failures (path, size, mtime_ns, reason, failed) VALUES (?, 1, 1, 'broken', 'now')",
                    (str(first / "bad.png"),))
    first.rename(tmp_path / "second")
    assert cli.main(["index", str(first), "--db", db]) == 2
    assert "--prune alone drops its images" in capsys.readouterr().err
    assert cli.main(["index", str(tmp_path / "second"), "--db", db, "--prune", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["added"] == 3 and sorted(Path(p).name for p in out["pruned"]) == ["blue.png", "green.png", "red.png"]
    assert out["index"]["count"] == 3 and len(index) == 3
    assert [h.path for h in index.search_text(FakeModel(), "red", 1)] == [str(tmp_path / "second" / "red.png")]
    with sqlite3.connect(index.sqlite_path) as con:
        assert con.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0
    assert cli.main(["index", "--db", db, "--prune"]) == 0  # alone: nothing more to drop
    assert "pruned 0 images whose files are gone" in capsys.readouterr().out
