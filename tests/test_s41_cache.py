"""Feature caches and hard negatives (review s41): a stale or damaged cache entry must never feed training wrong
features, and a hard negative must never be one of the photo's own captions."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.cache import cache_dir
from polymodal.data.negatives import negatives_per_caption, swapped_captions
from polymodal.data.pairs import read_pair_sources
from polymodal.encoders.efficientnet import LITE0_TRANSFORM
from polymodal.errors import PolymodalError
from polymodal.train import features
from polymodal.train.features import image_features, readable_rows


class _Tower:
    precision = "fp32"


class _Model:
    """image_features' view of a model: a transform, a cache signature and what is cached per image (the mean
    colour, with a bf16 tower rounded as a bf16 graph would)."""

    transform = LITE0_TRANSFORM
    image_cache_signature = "s41-fake"

    def __init__(self, precision: str = "fp32") -> None:
        self.image_tower = _Tower()
        self.image_tower.precision = precision

    def image_cache_input(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.image_tower.precision == "bf16":
            pixels = pixels.to(torch.bfloat16).float() + 0.25  # other numbers than fp32's
        return pixels.mean(dim=(2, 3))


@pytest.fixture()
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _bmp(path, colour) -> str:
    Image.new("RGB", (64, 64), colour).save(path)  # BMP: every edit keeps the byte size
    return str(path)


def _features(model, images, **kw) -> np.ndarray:
    return np.array(image_features(model, images, progress=False, **kw), dtype=np.float32)


def test_photo_replaced_with_its_mtime_put_back_is_encoded_again(own_cache):
    photo, other = _bmp(own_cache / "a.bmp", "red"), _bmp(own_cache / "b.bmp", "blue")
    model = _Model()
    before = _features(model, [photo])
    st = os.stat(photo)
    shutil.copyfile(other, photo)  # same path, same size, new pixels ...
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime (cp -p, rsync -a, tar -x, touch -r)
    assert os.stat(photo).st_size == st.st_size and os.stat(photo).st_mtime_ns == st.st_mtime_ns
    after = _features(model, [photo])
    assert not np.allclose(after, before)
    assert np.allclose(after, _features(model, [other]))


def test_bf16_tower_does_not_share_the_fp32_cache_entry(own_cache):
    photo = _bmp(own_cache / "a.bmp", (200, 100, 50))
    bf16 = _features(_Model("bf16"), [photo])  # fills the cache first
    fp32 = _features(_Model("fp32"), [photo])
    assert not np.allclose(fp32, bf16)
    assert np.allclose(fp32, _features(_Model("fp32"), [photo]))  # fp32 still hits its own entry
    assert len(list((cache_dir() / "features").glob("image-*.npy"))) == 2


def test_empty_cache_file_is_computed_again(own_cache):
    photo = _bmp(own_cache / "a.bmp", "green")
    model = _Model()
    want = _features(model, [photo])
    (entry,) = (cache_dir() / "features").glob("image-*.npy")
    entry.write_bytes(b"")  # a copy cut short, a full disk in an older version: np.load raises EOFError
    assert np.allclose(_features(model, [photo]), want)
    assert entry.stat().st_size > 0  # and written again


def test_empty_class_prompt_cache_is_computed_again(own_cache):
    """An empty conse-classes file stopped every load of `lite` (EOFError) until it was deleted by hand."""
    from polymodal.models import conse

    class Tower:
        dim = 4

        def __call__(self, texts):
            return torch.ones(len(texts), self.dim)

    want = conse.class_prompt_matrix(Tower())
    (entry,) = cache_dir().glob("conse-classes-*.npy")
    entry.write_bytes(b"")
    assert np.allclose(conse.class_prompt_matrix(Tower()), want)


def test_photo_that_failed_once_is_read_again_on_a_cached_run(own_cache, monkeypatch):
    photos = [_bmp(own_cache / "a.bmp", "red"), _bmp(own_cache / "b.bmp", "blue")]
    model, real = _Model(), features.open_pair_image
    failing = {photos[1]}

    def flaky(image, min_size=None):  # an NFS timeout, too many open files: an OSError that goes away
        if str(image) in failing:
            raise PolymodalError(f"not a readable image: {image} (Input/output error)")
        return real(image, min_size)

    monkeypatch.setattr(features, "open_pair_image", flaky)
    assert readable_rows(image_features(model, photos, progress=False, skip_unreadable=True)).tolist() == [0]
    failing.clear()  # the file system is back; the file itself (size, mtime) never changed
    again = image_features(model, photos, progress=False, skip_unreadable=True)
    assert readable_rows(again).tolist() == [0, 1]
    assert np.allclose(np.array(again[0, 1], np.float32), _features(model, [photos[1]])[0, 0])


def _pairs(tmp_path, rows):
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_pair_sources([str(tmp_path / "pairs.jsonl")])


def _own(pairset, pair):
    return {c.lower().rstrip(" .") for p, c in zip(pairset.pairs, pairset.captions) if p.image == pair.image}


def test_swapped_negative_is_never_another_caption_of_the_photo(tmp_path):
    gallery = [_bmp(tmp_path / "a.bmp", "red"), _bmp(tmp_path / "b.bmp", "blue")]
    pairs = _pairs(tmp_path, [
        {"image": str(gallery[0]), "caption": ["a man standing next to a woman .", "A woman standing next to a man ."]},
        {"image": str(gallery[1]), "caption": "a dog chases a cat"},
    ])
    lists = negatives_per_caption(pairs.pairs, "swap", per_caption=2, seed=0)
    for pair, negs in zip(pairs.pairs, lists):
        assert len(negs) == 2  # other swaps take the place of the one left out
        assert not {n.lower().rstrip(" .") for n in negs} & _own(pairs, pair), (pair.caption, negs)
    assert lists[2] == tuple(swapped_captions("a dog chases a cat", 2, seed=0))  # unchanged where nothing clashes


def test_given_negative_that_is_a_caption_of_the_same_photo_is_left_out(tmp_path, caplog):
    gallery = [_bmp(tmp_path / "a.bmp", "red")]
    pairs = _pairs(tmp_path, [
        {"image": str(gallery[0]), "caption": ["a red car beside a blue house", "a blue car beside a red house"],
         "negatives": ["a blue car beside a red house", "a red house beside a blue car"]},
    ])
    lists = negatives_per_caption(pairs.pairs, "data")
    assert lists == [("a red house beside a blue car",), ("a red house beside a blue car",)]
    assert "left out 1 hard negative" in caplog.text
