"""The image feature cache reuses a photo's row from another list's entry (review s54): an entry is keyed on its whole
list of photos, so another --seed (another validation split), one photo dropped or one added encoded every photo
again. Now only the photos no entry holds are encoded; the rest are copied, the same features bit for bit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from polymodal import cache_admin, cli
from polymodal.cache import cache_dir
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.models.dual_encoder import DualEncoder
import polymodal.train.features as features_module
from polymodal.train.features import image_features


class _Model:
    """image_features' view of a model; ``encoded`` counts the photos its tower ran on."""

    image_cache_signature = "s54-rowcache"

    def __init__(self) -> None:
        self.encoded = 0

    @staticmethod
    def transform(pils):
        return np.stack([np.asarray(p.resize((4, 4)), np.float32).transpose(2, 0, 1) for p in pils])

    def image_cache_input(self, pixels):
        self.encoded += len(pixels)
        return pixels.mean(dim=(2, 3)).reshape(-1, 3, 1).repeat(1, 1, 4)  # [B, 3, 4] a photo


@pytest.fixture()
def photos(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for i in range(12):
        paths.append(str(folder / f"{i:02d}.png"))
        Image.new("RGB", (4, 4), (i * 20, 7, 9)).save(paths[-1])
    (folder / "05.png").write_bytes(b"not a photo")  # unreadable: a NaN row, tried again by the next list
    return paths


def _cold(paths, tmp_path, monkeypatch, **kw):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cold-cache"))
    out = np.array(image_features(_Model(), paths, progress=False, skip_unreadable=True, **kw))
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    return out


def test_another_list_of_the_same_photos_encodes_only_the_new_ones(photos, tmp_path, monkeypatch):
    first = _Model()
    image_features(first, photos[:8], batch_size=3, progress=False, skip_unreadable=True)
    image_features(first, photos[8:10], batch_size=3, progress=False, skip_unreadable=True)
    assert first.encoded == 9  # 05 could not be read

    # another split of them (reordered, one dropped) and one new photo: only it, and 05 again, go through the tower
    again = _Model()
    wanted = [photos[9], photos[2], photos[0], photos[5], photos[8], photos[6], photos[11], photos[3]]
    feats = image_features(again, wanted, batch_size=3, progress=False, skip_unreadable=True)
    assert again.encoded == 1  # photos[11]; 05 still unreadable (opened, not encoded)
    assert isinstance(feats, np.memmap)  # memory-mapped from its own file, as any entry
    np.testing.assert_array_equal(np.array(feats), _cold(wanted, tmp_path, monkeypatch, batch_size=3))
    assert np.isnan(feats[0, 3]).all()

    # that list again: served whole, nothing encoded; the rows files are counted and cleared with their entries
    third = _Model()
    image_features(third, wanted, batch_size=3, progress=False, skip_unreadable=True)
    assert third.encoded == 0
    assert cache_admin.summary()["kinds"]["rowkeys-image"]["files"] == 3
    cache_admin.clear()
    assert not list((cache_dir() / "features").iterdir())


def test_a_photo_replaced_or_a_view_drawn_per_seed_is_not_reused(photos, tmp_path, monkeypatch):
    image_features(_Model(), photos[:4], progress=False, skip_unreadable=True)
    Image.new("RGB", (4, 4), (250, 250, 250)).save(photos[1])  # replaced in place: other content
    model = _Model()
    feats = image_features(model, photos[1:4], progress=False, skip_unreadable=True)
    assert model.encoded == 1
    np.testing.assert_array_equal(np.array(feats), _cold(photos[1:4], tmp_path, monkeypatch))

    from polymodal.data.augment import Augment

    model = _Model()
    image_features(model, photos[2:4], views=2, augment=Augment(), seed=1, progress=False)
    assert model.encoded == 4  # augmented views depend on the row and the seed: all drawn


def test_a_rows_file_whose_entry_is_gone_or_damaged_is_passed_over(photos):
    image_features(_Model(), photos[:4], progress=False, skip_unreadable=True)
    image_features(_Model(), photos[6:9], progress=False, skip_unreadable=True)
    folder = cache_dir() / "features"
    rows_files = sorted(folder.glob("rowkeys-image-*.npy"))
    for rows in rows_files:
        entry = folder / rows.name[len("rowkeys-"):]
        if np.load(entry).shape[1] == 4:
            entry.unlink()  # `cache clear` of the entry alone
        else:
            rows.write_bytes(b"")  # cut short
    model = _Model()
    feats = image_features(model, photos[:4] + photos[6:9], progress=False, skip_unreadable=True)
    assert model.encoded == 7 and feats.shape == (1, 7, 3, 4)


@pytest.fixture(scope="module")
def pairs_file(gallery, tmp_path_factory):
    path = tmp_path_factory.mktemp("s54-pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"image": str(gallery / f"{name}.jpg"), "caption": caption}) + "\n"
                            for name, (_, desc) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items()
                            for caption in (desc, f"a picture showing {desc}")))
    return path


def _train(capsys, pairs_file, out, seed):
    code = cli.main(["train", "contrastive", "--pairs", str(pairs_file), "--val-fraction", "0.3", "--seed", str(seed),
                     "--out", str(out), "--quiet", "--epochs", "1", "--batch-size", "4", "--embed-dim", "16"])
    assert code == 0
    capsys.readouterr()
    return load_file(str(out / "model" / "model.safetensors"))


def test_another_seed_encodes_no_photo_and_trains_the_model_a_cold_cache_gives(pairs_file, tmp_path, monkeypatch,
                                                                              capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (at more threads a photo encoded alone may differ by ~1e-5)
    try:
        monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cold"))
        cold = _train(capsys, pairs_file, tmp_path / "cold-run", seed=1)
        monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "warm"))
        _train(capsys, pairs_file, tmp_path / "seed0", seed=0)
        real = DualEncoder.image_cache_input
        encoded = []
        monkeypatch.setattr(DualEncoder, "image_cache_input", lambda self, x: encoded.append(len(x)) or real(self, x))
        warm = _train(capsys, pairs_file, tmp_path / "warm-run", seed=1)
    finally:
        torch.set_num_threads(threads)
    assert encoded == []  # seed 1's train and validation photos were all in seed 0's two entries
    assert cold.keys() == warm.keys()
    for name in cold:
        np.testing.assert_array_equal(cold[name], warm[name], err_msg=name)


def _open_entries(folder: Path) -> int:
    """Open file descriptors onto image feature entries under ``folder`` (memory maps hold one each; other tests of
    this process may hold theirs)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
            count += target.name.startswith("image-") and folder in target.parents
        except OSError:
            pass
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_a_list_drawn_from_many_entries_holds_few_open(tmp_path, monkeypatch):
    """Rows are copied one entry at a time (review s54): every entry stayed memory-mapped, a file descriptor each,
    until the list was written; past `ulimit -n` (256 on macOS) its own cache file could not be made."""
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    photos = []
    for i in range(41):
        photos.append(str(tmp_path / f"{i:02d}.png"))
        Image.new("RGB", (4, 4), (i * 6, 7, 9)).save(photos[-1])
    for i in range(40):  # one entry per photo (a questions file a day, each about one photo)
        image_features(_Model(), photos[i : i + 1], progress=False)
    held, encode = [], features_module._encode
    monkeypatch.setattr(features_module, "_encode", lambda *a: (held.append(_open_entries(tmp_path)), encode(*a))[1])
    model = _Model()
    feats = image_features(model, photos, progress=False)
    assert model.encoded == 1 and held and max(held) <= 2  # was 40: every entry copied from, still open
    assert isinstance(feats, np.memmap)
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cold"))
    np.testing.assert_array_equal(np.array(feats), np.array(image_features(_Model(), photos, progress=False)))
