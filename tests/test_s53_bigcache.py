"""The image feature cache (grids for VQA and captioner training, pooled features for contrastive) is written to its
file batch by batch: it was built whole in memory first (VQA v2's 82,000 photos as 7x7 grids: ~10 GB of RAM, more
than many machines have, for a file that is then memory-mapped). Where the cache cannot be written the features
still come back, in memory as before."""

import errno
import logging
import os
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from polymodal import cache
from polymodal.train.features import image_features

SHAPE = (49, 256)  # per photo: 25 KB in float16, a 7x7 grid of 256-d cells


class _Model:
    image_cache_signature = "s53-bigcache"

    @staticmethod
    def transform(pils):
        return np.stack([np.asarray(p, np.float32).transpose(2, 0, 1) for p in pils])

    def image_cache_input(self, pixels):
        base = torch.arange(SHAPE[0] * SHAPE[1], dtype=torch.float32).reshape(1, *SHAPE) / 1000
        return pixels.mean(dim=(1, 2, 3)).reshape(-1, 1, 1) + base


def _photos(tmp_path, n):
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:03d}.png")
        Image.new("RGB", (4, 4), (i % 256, 7, 9)).save(paths[-1])
    (folder / "003.png").write_bytes(b"not a photo")  # unreadable: a NaN row
    return [str(p) for p in paths]


def _expected(n):
    rows = [((i % 256) + 16) / 3 + np.arange(SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE) / 1000
            for i in range(n)]
    out = np.stack(rows).astype(np.float16)[None]
    out[0, 3] = np.nan
    return out


def test_the_image_cache_never_holds_more_than_a_batch_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    photos = _photos(tmp_path, 200)  # 5 MB of features, 100 KB a batch
    image_features(_Model(), photos[:5], progress=False, skip_unreadable=True)  # what it imports is not counted
    tracemalloc.start()
    try:
        feats = image_features(_Model(), photos, batch_size=4, progress=False, skip_unreadable=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < feats.nbytes / 4, f"{peak} bytes at the peak for {feats.nbytes} bytes of features"
    assert isinstance(feats, np.memmap) and Path(feats.filename).parent == tmp_path / "cache" / "features"
    np.testing.assert_array_equal(feats, _expected(200))
    assert not list((tmp_path / "cache" / "features").glob(".*"))  # no temporary left


def test_an_unwritable_cache_folder_gives_the_features_in_memory(tmp_path, monkeypatch, caplog):
    (tmp_path / "a-file").write_text("not a folder")  # fails for root too (chmod does not stop root)
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "a-file" / "cache"))
    with caplog.at_level(logging.WARNING):
        feats = image_features(_Model(), _photos(tmp_path, 10), batch_size=4, progress=False, skip_unreadable=True)
    assert not isinstance(feats, np.memmap)
    np.testing.assert_array_equal(feats, _expected(10))
    assert "POLYMODAL_CACHE" in caplog.text


def test_a_disk_that_fills_midway_gives_the_features_in_memory(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    fdopen = os.fdopen

    def filling(fd, mode, buffering=-1):  # the cache file takes the header and two batches, then the disk is full
        f = fdopen(fd, mode, buffering)
        write, room = f.write, [3]

        def write_until_full(data):
            room[0] -= 1
            if room[0] < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(data)

        f.write = write_until_full
        return f

    monkeypatch.setattr(cache.os, "fdopen", filling)
    with caplog.at_level(logging.WARNING):
        feats = image_features(_Model(), _photos(tmp_path, 10), batch_size=4, progress=False, skip_unreadable=True)
    np.testing.assert_array_equal(feats, _expected(10))
    assert "free some space" in caplog.text
    assert not list((tmp_path / "cache" / "features").iterdir())  # the temporary is gone


def test_an_error_midway_leaves_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))

    class Failing(_Model):
        calls = 0

        def image_cache_input(self, pixels):
            Failing.calls += 1
            if Failing.calls == 2:
                raise KeyboardInterrupt
            return super().image_cache_input(pixels)

    try:
        image_features(Failing(), _photos(tmp_path, 10), batch_size=4, progress=False, skip_unreadable=True)
    except KeyboardInterrupt:
        pass
    assert not list((tmp_path / "cache").rglob("*.*"))
