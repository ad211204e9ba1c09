"""Stop 45: `polymodal index photos archive` after `mv photos/2023 archive/` decoded every moved photo again: the
folders were synced one by one, and syncing `photos` dropped the moved photos' rows before `archive` met them (the
other order reused their vectors, as the README promises for a moved folder). One sync over all the folders now."""

import shutil

import pytest

from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex


@pytest.fixture
def moved(gallery, tmp_path):
    """photos/ with a sub-folder 2023/ of 3 photos and 2 more photos; archive/ with 1 photo of its own."""
    photos, archive = tmp_path / "photos", tmp_path / "archive"
    (photos / "2023").mkdir(parents=True)
    archive.mkdir()
    jpgs = sorted(gallery.glob("*.jpg"))[:6]  # copies: other tests write into the shared gallery
    for i, p in enumerate(jpgs):
        shutil.copy(p, (photos / "2023" if i < 3 else photos if i < 5 else archive) / p.name)
    return photos, archive


def _counting(monkeypatch, model) -> list:
    decoded: list = []
    real = model.encode_image

    def encode_image(paths, *args, **kwargs):
        decoded.extend(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(model, "encode_image", encode_image)
    return decoded


@pytest.mark.parametrize("order", ["moved-from first", "moved-to first"])
def test_photos_moved_between_two_folders_keep_their_vectors(moved, lite, tmp_path, monkeypatch, order):
    photos, archive = moved
    db = tmp_path / "db"
    assert main(["index", str(photos), str(archive), "--db", str(db), "--model", "lite", "--json"]) == 0
    before = {h.path.rsplit("/", 1)[-1]: h.score for h in ImageIndex(db).search_text(lite, "a photo", k=10)}
    shutil.move(str(photos / "2023"), str(archive / "2023"))
    decoded = _counting(monkeypatch, lite)
    monkeypatch.setattr("polymodal.cli.load_model", lambda *a, **k: lite)
    folders = [str(photos), str(archive)] if order == "moved-from first" else [str(archive), str(photos)]
    assert main(["index", *folders, "--db", str(db), "--model", "lite", "--json"]) == 0
    assert decoded == []  # 3 moved photos decoded again when photos/ came first
    hits = ImageIndex(db).search_text(lite, "a photo", k=10)
    assert len(hits) == 6 and sum("/archive/2023/" in h.path for h in hits) == 3
    assert {h.path.rsplit("/", 1)[-1]: h.score for h in hits} == pytest.approx(before)


def test_update_folders_takes_a_list(lite, tmp_path):
    with pytest.raises(PolymodalError, match="takes a list of folders"):
        ImageIndex(tmp_path / "db").update_folders(str(tmp_path), lite)
