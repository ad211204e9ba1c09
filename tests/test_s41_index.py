"""Index rescans after a photo is replaced under its old size and mtime (cp -p, rsync -a, tar -x, touch -r,
exiftool -P): the ctime tells, and a hash decides when only the times changed. And eval retrieval --word-order:
a scrambled copy that reads as the caption itself or as another caption of the photo is no wrong caption."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
from PIL import Image

import polymodal.index.store as store
from polymodal.data.negatives import same_text
from polymodal.eval.word_order import KINDS, scrambled, word_order_accuracy
from polymodal.index import ImageIndex
from polymodal.index.scan import file_sha256
from test_index import COLOURS, FakeModel, top


def bmp(path: Path, colour: str) -> Path:
    """A 16x16 BMP: every colour gives a file of the same size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), COLOURS[colour]).save(path)
    return path


def put_back(path: Path, old: os.stat_result) -> None:
    """Give path its old mtime, as cp -p / touch -r do; the kernel sets the ctime to now (its clock is coarse, so
    wait until it differs from the old one)."""
    for _ in range(200):
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
        if path.stat().st_ctime_ns != old.st_ctime_ns:
            return
        time.sleep(0.01)
    raise AssertionError("the ctime did not move")


def built(tmp_path: Path) -> tuple[ImageIndex, Path]:
    photos = tmp_path / "photos"
    for colour in ("red", "green", "blue"):
        bmp(photos / f"{colour}.bmp", colour)
    index = ImageIndex(tmp_path / "db")
    index.update(photos, FakeModel(), progress=False)
    return index, photos


def test_a_photo_replaced_under_its_old_size_and_mtime_is_embedded_again(tmp_path: Path) -> None:
    index, photos = built(tmp_path)
    green = photos / "green.bmp"
    old = green.stat()
    bmp(green, "yellow")
    put_back(green, old)
    assert (green.stat().st_size, green.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    model = FakeModel()
    report = index.update(photos, model, progress=False)
    assert (report.updated, report.unchanged, model.embedded) == (1, 2, 1)
    assert top(index, "yellow") == "green.bmp"  # not the green photo's old vector


def test_times_changed_without_new_content_hash_once_and_embed_nothing(tmp_path: Path, monkeypatch) -> None:
    index, photos = built(tmp_path)
    red = photos / "red.bmp"
    old = red.stat()
    os.chmod(red, 0o600)  # the ctime moves, the bytes don't
    put_back(red, old)
    hashed = []
    monkeypatch.setattr(store, "file_sha256", lambda p: hashed.append(Path(p).name) or file_sha256(p))
    model = FakeModel()
    assert index.update(photos, model, progress=False).unchanged == 3
    assert (hashed, model.embedded) == (["red.bmp"], 0)
    hashed.clear()
    assert index.update(photos, model, progress=False).unchanged == 3
    assert (hashed, model.embedded) == ([], 0)  # the new ctime was kept


def test_a_failed_photo_repaired_under_its_old_size_and_mtime_is_read_again(tmp_path: Path) -> None:
    index, photos = built(tmp_path)
    blue = photos / "blue.bmp"
    good, old = blue.read_bytes(), blue.stat()
    index.remove([blue])
    blue.write_bytes(b"\0" * len(good))  # bit rot: same size, same mtime
    put_back(blue, old)
    first = index.update(photos, FakeModel(), progress=False)
    assert [Path(p).name for p, _ in first.skipped] == ["blue.bmp"]
    again = FakeModel()
    assert "unchanged since it failed" in index.update(photos, again, progress=False).skipped[0][1]
    assert again.embedded == 0
    blue.write_bytes(good)  # cp -p from a backup
    put_back(blue, blue.stat())
    os.utime(blue, ns=(old.st_atime_ns, old.st_mtime_ns))
    fixed = index.update(photos, FakeModel(), progress=False)
    assert (fixed.added, fixed.skipped) == (1, []) and top(index, "blue") == "blue.bmp"


def test_an_index_from_before_ctimes_is_trusted_once_and_then_kept(tmp_path: Path, monkeypatch) -> None:
    index, photos = built(tmp_path)
    with sqlite3.connect(index.sqlite_path) as con:  # the layout the code before this made
        con.execute("ALTER TABLE images DROP COLUMN ctime_ns")
        con.execute("ALTER TABLE failures DROP COLUMN ctime_ns")
    hashed = []
    monkeypatch.setattr(store, "file_sha256", lambda p: hashed.append(p) or file_sha256(p))
    model = FakeModel()
    assert index.update(photos, model, progress=False).unchanged == 3  # no file read: no cost on upgrade
    assert (hashed, model.embedded) == ([], 0)
    with sqlite3.connect(index.sqlite_path) as con:
        assert con.execute("SELECT COUNT(*) FROM images WHERE ctime_ns IS NULL").fetchone()[0] == 0
    green = photos / "green.bmp"
    old = green.stat()
    bmp(green, "yellow")
    put_back(green, old)
    assert index.update(photos, FakeModel(), progress=False).updated == 1 and top(index, "yellow") == "green.bmp"


# -- eval retrieval --word-order: a scrambled copy that is a true caption is no wrong caption -------------------------
MAN = "a man in a red shirt stands beside a woman ."
WOMAN = "A woman in a red shirt stands beside a man"  # MAN with two words swapped, case and period aside


def test_a_scrambled_copy_never_reads_as_the_caption_itself() -> None:
    caption = "some outdoor tables sitting next to  some umbrellas"  # COCO's, with its double space
    for kind in KINDS:
        assert same_text(caption) not in {same_text(c) for c in scrambled(caption, kind)}, kind


def test_a_scrambled_copy_is_never_another_caption_of_the_photo() -> None:
    assert same_text(WOMAN) in {same_text(c) for c in scrambled(MAN, "swap")}  # what it would be without exclude
    copies = scrambled(MAN, "swap", exclude=[MAN, WOMAN])
    assert len(copies) == 4 and same_text(WOMAN) not in {same_text(c) for c in copies}


class _TwoTrueCaptions:
    """Order-aware text embeddings, except that both true captions of photo 0 embed as that photo."""

    def _one(self, text):
        key = "photo0" if same_text(text) in {same_text(MAN), same_text(WOMAN)} else text
        v = np.random.default_rng(abs(hash(key)) % 2**32).normal(size=16)
        return v / np.linalg.norm(v)

    def encode_text(self, texts):
        return np.stack([self._one(t) for t in texts])

    def encode_image(self, images):
        return self.encode_text([MAN for _ in images])


def test_a_model_that_ranks_both_true_captions_first_passes_the_swap_test() -> None:
    out = word_order_accuracy(_TwoTrueCaptions(), [0], [MAN], kinds=("swap",), other_captions=[[MAN, WOMAN]])
    assert (out["order/swap"], out["order/swap_n"]) == (1.0, 1)


def test_eval_retrieval_gives_the_word_order_test_each_photos_captions(tmp_path, capsys, monkeypatch) -> None:
    import polymodal.eval.word_order as word_order
    from polymodal import cli
    from polymodal.data.samples import write_sample_gallery

    photos = write_sample_gallery(tmp_path / "photos")[:3]
    captions = [[MAN, WOMAN], ["a cat sleeping on a soft grey sofa"], ["a cup of hot coffee on a small saucer"]]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(p), "caption": c}) + "\n"
                             for p, cs in zip(photos, captions) for c in cs))
    seen = {}

    def spy(model, images, first, **kw):
        seen.update(first=first, others=kw.get("other_captions"))
        return {}

    monkeypatch.setattr(word_order, "word_order_accuracy", spy)
    assert cli.main(["eval", "retrieval", "--pairs", str(pairs), "--model", "lite", "--word-order"]) == 0
    assert seen["first"] == [cs[0] for cs in captions]
    assert [list(o) for o in seen["others"]] == captions


def test_a_renamed_copied_or_moved_photo_takes_its_vector_without_decoding(tmp_path: Path) -> None:
    index, photos = built(tmp_path)
    (photos / "red.bmp").rename(photos / "scarlet.bmp")
    (photos / "green.bmp").write_bytes((photos / "blue.bmp").read_bytes())  # changed: now a copy of blue
    (photos / "blue2.bmp").write_bytes((photos / "blue.bmp").read_bytes())
    (photos / "blue3.bmp").write_bytes((photos / "blue.bmp").read_bytes())
    model = FakeModel()
    report = index.update(photos, model, progress=False)
    assert (report.added, report.updated, report.removed, model.embedded) == (3, 1, 1, 0)
    assert top(index, "red") == "scarlet.bmp"
    assert {Path(h.path).name for h in index.search_text(FakeModel(), "blue", k=4)} == {
        "blue.bmp", "blue2.bmp", "blue3.bmp", "green.bmp"}
    moved = tmp_path / "moved"
    photos.rename(moved)
    model = FakeModel()
    assert index.update(moved, model, progress=False).added == 5 and model.embedded == 0
    assert [Path(p).parent for p in index.prune()] == [photos] * 5 and top(index, "red") == "scarlet.bmp"


def test_copies_new_in_one_batch_are_decoded_once(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for name in ("a", "b", "c"):
        bmp(photos / f"{name}.bmp", "cyan")
    model = FakeModel()
    assert ImageIndex(tmp_path / "db").update(photos, model, progress=False).added == 3 and model.embedded == 1
