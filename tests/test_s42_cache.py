"""Caches (s42): the hidden temporary file a killed cache write leaves is deleted by a later write, once it has
been untouched for an hour; a write in progress (touched recently) is left alone."""

import os
import time

import numpy as np

from polymodal.cache import cache_dir, load_cached, store_cached


def test_a_killed_writes_leftover_is_deleted_by_a_later_write(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    folder = cache_dir() / "features"
    folder.mkdir(parents=True)
    old, live = folder / ".grid-abc.npy.x1.tmp", folder / ".grid-def.npy.x2.tmp"
    old.write_bytes(b"\0" * 1000)
    live.write_bytes(b"\0" * 1000)
    an_hour_ago = time.time() - 3700
    os.utime(old, (an_hour_ago, an_hour_ago))
    path, cached = load_cached("k", "pooled")
    assert cached is None
    np.testing.assert_array_equal(store_cached(path, np.ones((2, 3), np.float16)), np.ones((2, 3)))
    assert not old.exists() and live.exists()
