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


def test_a_write_onto_a_device_or_a_pipe_is_refused(tmp_path):
    """Renamed onto /dev/null, a named pipe or a /proc/self/fd link, an atomic write put a plain file in the device's
    place (as root) or failed after the work."""
    import pytest

    from polymodal.cache import atomic_write_bytes
    from polymodal.errors import PolymodalError

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = tmp_path / "out.txt"
    out.write_text("before")
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    paths = [fifo, link]
    try:  # a device of our own (as root): never the real /dev/null, which a failing run would replace
        import stat

        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        paths.append(tmp_path / "null")
    except (OSError, AttributeError):
        pass
    for path in paths:
        with pytest.raises(PolymodalError, match="not a regular file"):
            atomic_write_bytes(path, b"items")
    assert link.is_symlink() and not fifo.is_file()
    atomic_write_bytes(out, b"after")  # a regular file is replaced as before
    assert out.read_text() == "after"
