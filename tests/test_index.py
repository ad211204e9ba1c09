"""The persistent image index, with a tiny fake model: an image's vector is its mean colour, projected."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

from polymodal.data.images import ImageTransform
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex, scan_images
from polymodal.models.base import EmbeddingModel

COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}


class FakeModel(EmbeddingModel):
    name = "fake"
    version = "1"
    dim = 8
    transform = ImageTransform(resize=8, crop=8, resample="bilinear")

    def __init__(self, version: str = "1", dim: int = 8, fail_after: int | None = None, kill_after: int | None = None):
        super().__init__()
        self.version, self.dim = version, dim
        self.fail_after, self.kill_after = fail_after, kill_after
        self.embedded = 0  # images seen by _image_batch
        self.proj = torch.from_numpy(np.random.default_rng(0).standard_normal((3, dim)).astype(np.float32))

    def _image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.embedded >= self.fail_after:
            raise RuntimeError("model crashed")
        if self.kill_after is not None and self.embedded >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self.embedded += len(pixels)
        return pixels.mean(dim=(2, 3)) @ self.proj  # pixels are in [-1, 1] (mean 0.5, std 0.5)

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        rgb = torch.tensor([COLOURS[t] for t in texts], dtype=torch.float32) / 127.5 - 1
        return rgb @ self.proj


def paint(path: Path, colour: str, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), COLOURS[colour]).save(path)
    if mtime is not None:  # explicit, so a rewrite is seen even on filesystems with coarse timestamps
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    paint(folder / "red.png", "red")
    paint(folder / "green.png", "green")
    paint(folder / "sub" / "Blue.JPG", "blue")  # nested, JPEG, upper-case extension
    return folder


@pytest.fixture
def built(tmp_path: Path, photos: Path) -> tuple[ImageIndex, Path]:
    index = ImageIndex(tmp_path / "db")
    index.update(photos, FakeModel(), progress=False)
    return index, photos


def top(index: ImageIndex, text: str, model=None) -> str:
    return Path(index.search_text(model or FakeModel(), text, k=1)[0].path).name


def test_scan_finds_images_recursively_sorted(photos: Path) -> None:
    (photos / "notes.txt").write_text("not an image")
    paint(photos / ".hidden" / "x.png", "red")
    files, skipped = scan_images(photos)
    assert [Path(f.path).relative_to(photos.resolve()).as_posix() for f in files] == [
        "green.png",
        "red.png",
        "sub/Blue.JPG",
    ]
    assert skipped == [] and all(f.size > 0 and f.mtime_ns > 0 for f in files)


def test_build_and_search(tmp_path: Path, photos: Path) -> None:
    model = FakeModel()
    index = ImageIndex(tmp_path / "db")
    report = index.update(photos, model, progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged, report.skipped) == (3, 0, 0, 0, [])
    assert model.embedded == 3
    for name in ("meta.sqlite", "vectors.faiss"):
        assert (tmp_path / "db" / name).is_file()

    info = ImageIndex(tmp_path / "db").info()
    assert info["count"] == 3 and info["model"] == "fake@1" and info["dim"] == 8
    assert info["db"] == str((tmp_path / "db").resolve()) and info["created"] and info["updated"]

    fresh = ImageIndex(tmp_path / "db")
    hits = fresh.search_text(model, "red", k=2)
    assert Path(hits[0].path) == (photos / "red.png").resolve() and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 2 and hits[0].score >= hits[1].score
    assert top(fresh, "blue") == "Blue.JPG"
    assert Path(fresh.search_image(model, photos / "green.png", k=1)[0].path).name == "green.png"
    assert len(fresh.search_text(model, "red", k=100)) == 3  # k clamped to the count

    queries = model.encode_text(["green", "blue"])
    both = fresh.search(queries, k=1)
    assert [Path(h[0].path).name for h in both] == ["green.png", "Blue.JPG"]
    assert len(fresh.search(queries[0], k=3)) == 1  # a [D] query is one query


def test_rerun_embeds_nothing(built) -> None:
    index, photos = built
    model = FakeModel()
    report = index.update(photos, model, progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 0, 3)
    assert model.embedded == 0


def test_modified_file_is_the_only_one_embedded(built) -> None:
    index, photos = built
    green = photos / "green.png"
    paint(green, "yellow", mtime=green.stat().st_mtime + 10)
    model = FakeModel()
    report = index.update(photos, model, progress=False)
    assert (report.added, report.updated, report.unchanged) == (0, 1, 2)
    assert model.embedded == 1
    assert top(index, "yellow") == "green.png"
    assert ImageIndex(index.db).info()["count"] == 3


def test_touched_file_is_not_embedded(built) -> None:
    index, photos = built
    red = photos / "red.png"
    new_mtime = red.stat().st_mtime + 10
    os.utime(red, (new_mtime, new_mtime))
    model = FakeModel()
    report = index.update(photos, model, progress=False)
    assert (report.updated, report.unchanged, model.embedded) == (0, 3, 0)
    with sqlite3.connect(index.sqlite_path) as con:
        stored = con.execute("SELECT mtime_ns FROM images WHERE path = ?", (str(red.resolve()),)).fetchone()[0]
    assert stored == red.stat().st_mtime_ns  # next time the stat check alone says unchanged


def test_deleted_file_is_dropped(built) -> None:
    index, photos = built
    (photos / "sub" / "Blue.JPG").unlink()
    report = index.update(photos, FakeModel(), progress=False)
    assert (report.removed, report.unchanged) == (1, 2)
    assert index.info()["count"] == 2
    assert all(Path(h.path).name != "Blue.JPG" for h in index.search_text(FakeModel(), "blue", k=10))


def test_corrupt_file_is_skipped_and_reported(tmp_path: Path, photos: Path) -> None:
    (photos / "bad.jpg").write_text("this is text, not a JPEG")
    index = ImageIndex(tmp_path / "db")
    report = index.update(photos, FakeModel(), progress=False, batch_size=32)  # bad file shares a batch
    assert report.added == 3
    assert [Path(p).name for p, _ in report.skipped] == ["bad.jpg"]
    assert "not a readable image" in report.skipped[0][1]
    assert index.info()["count"] == 3 and top(index, "red") == "red.png"


def test_gif_uses_first_frame(tmp_path: Path) -> None:
    folder = tmp_path / "anim"
    paint(folder / "red.png", "red")
    frames = [Image.new("RGB", (16, 16), COLOURS[c]) for c in ("green", "red")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    index = ImageIndex(tmp_path / "db")
    assert index.update(folder, FakeModel(), progress=False).added == 2
    assert top(index, "green") == "anim.gif"


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    index = ImageIndex(tmp_path / "db")
    with pytest.raises(PolymodalError, match="folder not found"):
        index.update(tmp_path / "nope", FakeModel(), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(PolymodalError, match="no images found") as err:
        index.update(empty, FakeModel(), progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "db").exists()  # nothing created for a failed start


def test_missing_index(tmp_path: Path) -> None:
    index = ImageIndex(tmp_path / "nope")
    for call in (lambda: index.search_text(FakeModel(), "red"), index.info, lambda: index.remove(["x.png"])):
        with pytest.raises(PolymodalError, match=r"no index at .*polymodal index DIR --db"):
            call()
    assert not index.exists() and not (tmp_path / "nope").exists()


def test_searching_the_photo_folder_itself_says_to_index_it_elsewhere(tmp_path: Path) -> None:
    # `--db pics` where pics is the photo folder: `polymodal index DIR --db pics` would be refused (a folder of other
    # files), so the advice names a folder of its own
    photos = tmp_path / "pics"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    with pytest.raises(PolymodalError, match=r"folder of other files \(a\.jpg, \.\.\.\); build an index of it with "
                                             r"`polymodal index .*pics --db pics\.idx`"):
        ImageIndex(photos).search_text(FakeModel(), "red")


def test_an_index_still_being_built_is_not_called_missing(tmp_path: Path) -> None:
    index = ImageIndex(tmp_path / "coming")
    (tmp_path / "coming").mkdir()
    with FileLock(str(index.lock_path)):  # another writer's first update: lock taken, no tables yet
        with pytest.raises(PolymodalError, match="being built by another process") as err:
            index.search_text(FakeModel(), "red")
    assert "\n" not in str(err.value)
    with pytest.raises(PolymodalError, match="no index at"):  # the writer gave up: now it is missing
        index.search_text(FakeModel(), "red")


def test_other_model_is_refused(built) -> None:
    index, photos = built
    for other in (FakeModel(version="2"), FakeModel(dim=16)):
        # the recorded model itself loads otherwise now: --model fake would only load it again (stop 42)
        with pytest.raises(PolymodalError, match=r"built with model fake@1 .*fake has changed since.*new --db"):
            index.update(photos, other, progress=False)
        with pytest.raises(PolymodalError, match="fake@1"):
            index.search_text(other, "red")
    with pytest.raises(PolymodalError, match="dimension 5"):
        index.search(np.ones(5, dtype=np.float32))
    assert index.info()["count"] == 3


def test_second_writer_is_refused(built) -> None:
    index, photos = built
    paint(photos / "white.png", "white")
    with FileLock(str(index.lock_path)):  # another writer holds the lock
        with pytest.raises(PolymodalError, match="being written by another process .*lock file"):
            index.update(photos, FakeModel(), progress=False)
        with pytest.raises(PolymodalError, match="being written by another process"):
            index.remove([photos / "red.png"])
        assert top(ImageIndex(index.db), "red") == "red.png"  # readers need no lock
    assert index.update(photos, FakeModel(), progress=False).added == 1


def test_crash_midway_keeps_previous_index(built) -> None:
    index, photos = built
    faiss_before = index.faiss_path.read_bytes()
    for colour in ("cyan", "magenta", "white"):
        paint(photos / f"{colour}.png", colour)
    green = photos / "green.png"
    paint(green, "yellow", mtime=green.stat().st_mtime + 10)
    with pytest.raises(RuntimeError, match="model crashed"):
        index.update(photos, FakeModel(fail_after=2), progress=False, batch_size=1)

    assert index.faiss_path.read_bytes() == faiss_before
    for reader in (index, ImageIndex(index.db)):
        assert reader.info()["count"] == 3
        assert top(reader, "green") == "green.png"  # the old vector, not the half-written yellow one
        assert all(Path(h.path).name != "cyan.png" for h in reader.search_text(FakeModel(), "cyan", k=10))
    report = index.update(photos, FakeModel(), progress=False)
    assert (report.added, report.updated, report.unchanged) == (3, 1, 2)


def test_kill_midway_keeps_previous_index(built) -> None:
    index, photos = built
    for colour in ("cyan", "magenta", "white"):
        paint(photos / f"{colour}.png", colour)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from test_index import FakeModel\n"
        "from polymodal.index import ImageIndex\n"
        "ImageIndex(sys.argv[2]).update(sys.argv[3], FakeModel(kill_after=2), progress=False, batch_size=1)\n"
    )
    args = [sys.executable, "-c", script, str(Path(__file__).parent), str(index.db), str(photos)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr

    fresh = ImageIndex(index.db)
    assert fresh.info()["count"] == 3 and top(fresh, "red") == "red.png"
    assert fresh.update(photos, FakeModel(), progress=False).added == 3  # the dead writer's lock is gone


def test_faiss_file_missing_or_stale_is_rebuilt(built) -> None:
    index, photos = built
    index.faiss_path.unlink()
    fresh = ImageIndex(index.db)
    assert top(fresh, "blue") == "Blue.JPG"
    assert index.faiss_path.is_file()  # the reader wrote the rebuilt cache back

    old = index.faiss_path.read_bytes()
    paint(photos / "white.png", "white")
    index.update(photos, FakeModel(), progress=False)
    index.faiss_path.write_bytes(old)  # e.g. a crash between the commit and the FAISS write
    assert top(ImageIndex(index.db), "white") == "white.png"
    assert index.faiss_path.read_bytes() != old


def test_remove_paths(built) -> None:
    index, photos = built
    assert index.remove([photos / "red.png", photos / "never-indexed.png"]) == 1
    fresh = ImageIndex(index.db)
    assert fresh.info()["count"] == 2
    assert all(Path(h.path).name != "red.png" for h in fresh.search_text(FakeModel(), "red", k=10))


def test_folders_share_an_index(built, tmp_path: Path) -> None:
    index, photos = built
    other = tmp_path / "other"
    paint(other / "white.png", "white")
    assert index.update(other, FakeModel(), progress=False).added == 1
    # Updating one folder leaves the other folder's rows alone.
    assert index.update(photos, FakeModel(), progress=False).removed == 0
    assert index.info()["count"] == 4 and top(index, "white") == "white.png"


def test_readers_see_the_last_commit_during_an_update(built) -> None:
    index, photos = built
    paint(photos / "white.png", "white")
    halfway, resume = threading.Event(), threading.Event()

    class SlowModel(FakeModel):
        def _image_batch(self, pixels):
            halfway.set()
            assert resume.wait(10)
            return super()._image_batch(pixels)

    writer = threading.Thread(target=index.update, args=(photos, SlowModel()), kwargs={"progress": False})
    writer.start()
    try:
        assert halfway.wait(10)
        reader = ImageIndex(index.db)  # not blocked by the writer's open transaction
        assert reader.info()["count"] == 3 and top(reader, "red") == "red.png"
    finally:
        resume.set()
        writer.join(10)
    assert ImageIndex(index.db).info()["count"] == 4


def test_faiss_file_has_the_database_mode(built) -> None:
    index, _ = built
    assert stat.S_IMODE(index.faiss_path.stat().st_mode) == stat.S_IMODE(index.sqlite_path.stat().st_mode)


def _faiss_ids(index: ImageIndex) -> list[int]:
    import faiss

    stored = faiss.read_index(str(index.faiss_path))  # kept alive while its id_map is read
    return sorted(faiss.vector_to_array(stored.id_map).tolist())


def _sqlite_ids(index: ImageIndex) -> list[int]:
    with sqlite3.connect(index.sqlite_path) as con:
        return [r[0] for r in con.execute("SELECT id FROM images ORDER BY id")]


def test_deleted_images_leave_the_faiss_index_too(built) -> None:
    # A deleted row's vector left in FAISS is a ghost: it wins a k=1 search, then is filtered out -> no hits.
    index, photos = built
    assert index.remove([photos / "red.png"]) == 1
    hits = index.search_text(FakeModel(), "red", k=1)
    assert len(hits) == 1 and Path(hits[0].path).name != "red.png"
    assert _faiss_ids(index) == _sqlite_ids(index) and len(_sqlite_ids(index)) == 2

    (photos / "sub" / "Blue.JPG").unlink()  # the update path drops rows the same way (and re-adds red.png)
    report = index.update(photos, FakeModel(), progress=False)
    assert (report.added, report.removed) == (1, 1)
    hits = index.search_text(FakeModel(), "blue", k=1)
    assert len(hits) == 1 and Path(hits[0].path).name != "Blue.JPG"
    assert _faiss_ids(index) == _sqlite_ids(index) and len(_sqlite_ids(index)) == 2


def test_query_vectors_are_normalised(built) -> None:
    # Scores are cosines whatever the query's length: a scaled query scores the same as the unit one.
    index, _ = built
    query = FakeModel().encode_text(["red"])[0]
    unit = index.search(query, k=3)[0]
    scaled = index.search(5 * query, k=3)[0]
    assert unit[0].score == pytest.approx(1.0, abs=1e-4) and scaled[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.path for h in scaled] == [h.path for h in unit]
    assert [h.score for h in scaled] == pytest.approx([h.score for h in unit], abs=1e-4)


def test_faiss_file_is_replaced_atomically(built) -> None:
    # Written to a temp file and renamed: a reader never sees half a file, so the inode changes on each write.
    index, photos = built
    before = index.faiss_path.stat().st_ino
    paint(photos / "white.png", "white")
    assert index.update(photos, FakeModel(), progress=False).added == 1
    assert index.faiss_path.stat().st_ino != before
    assert [p.name for p in index.db.iterdir() if p.name.endswith(".tmp")] == []
    assert top(ImageIndex(index.db), "white") == "white.png"


def test_changed_file_with_its_old_mtime_is_embedded_again(built) -> None:
    # The stat check compares size as well as mtime: a rewrite that keeps the old mtime is still seen.
    index, photos = built
    green = photos / "green.png"
    old = green.stat()
    Image.new("RGB", (40, 24), COLOURS["yellow"]).save(green)  # other content, other size
    os.utime(green, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert green.stat().st_size != old.st_size and green.stat().st_mtime_ns == old.st_mtime_ns
    model = FakeModel()
    report = index.update(photos, model, progress=False)
    assert (report.updated, report.unchanged, model.embedded) == (1, 2, 1)
    assert top(index, "yellow") == "green.png"


def test_sibling_folder_with_a_common_prefix_is_left_alone(built, tmp_path: Path) -> None:
    # "photos" must not claim "photos2"'s rows: the folder match is on "photos/", not the bare prefix.
    index, photos = built
    paint(tmp_path / "photos2" / "white.png", "white")
    assert index.update(tmp_path / "photos2", FakeModel(), progress=False).added == 1
    report = index.update(photos, FakeModel(), progress=False)
    assert (report.removed, report.unchanged) == (0, 3)
    assert index.info()["count"] == 4 and top(index, "white") == "white.png"


def test_unchanged_update_writes_back_a_missing_faiss_file(built) -> None:
    # The writer rebuilt the vectors from SQLite; it saves them even when no image changed.
    index, photos = built
    index.faiss_path.unlink()
    report = index.update(photos, FakeModel(), progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 0, 3)
    assert index.faiss_path.is_file()
    assert _faiss_ids(index) == _sqlite_ids(index)


def test_a_folder_that_cannot_be_listed_keeps_its_rows(tmp_path, photos, monkeypatch):
    """A subfolder unlistable for one sync (permissions, a share's I/O error) is skipped, and its images stay: they
    are unknown, not deleted (dropping them would re-embed them all once it is readable again)."""
    index, model = ImageIndex(tmp_path / "db"), FakeModel()
    index.update(photos, model, progress=False)
    locked, real = str((photos / "sub").resolve()), os.scandir

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = index.update(photos, model, progress=False)
    assert (report.removed, report.unchanged, len(index)) == (0, 2, 3)
    assert [why for _, why in report.skipped] == ["cannot list folder (Permission denied)"]
    monkeypatch.setattr(os, "scandir", real)
    (photos / "sub" / "Blue.JPG").unlink()  # listable again: a real deletion still leaves
    assert index.update(photos, model, progress=False).removed == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_fifo_named_like_an_image_is_skipped_not_opened(tmp_path, photos):
    os.mkfifo(photos / "pipe.jpg")  # opening it would block for ever
    report = ImageIndex(tmp_path / "db").update(photos, FakeModel(), progress=False)
    assert report.added == 3 and (str(photos.resolve() / "pipe.jpg"), "not a file") in report.skipped


def test_an_index_folder_whose_path_is_not_utf8(tmp_path, photos):
    """faiss.read_index takes no surrogate-escaped path: the cache file is read by Python."""
    index, model = ImageIndex(tmp_path / "Fotos_M\udcfcller" / "db"), FakeModel()
    index.update(photos, model, progress=False)
    assert index.faiss_path.is_file()
    assert ImageIndex(index.db).search_text(model, "red", k=1)[0].path.endswith("red.png")  # reads the file
    assert index.update(photos, model, progress=False).unchanged == 3
