"""Review of ec8f897 (helper diffreviewC, stop 53): "out of memory" is read from allocators' errors only, never from
a user's own error that quotes a path; a feature cache that fills the disk still says to free space."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np


def test_an_error_quoting_a_path_with_bad_alloc_in_it_is_not_out_of_memory(tmp_path, capsys):
    # `polymodal index photos/bad_alloc` (a missing folder) said "out of memory (...not found; pass fold)" and cut
    # the user's own line at 120 characters
    from polymodal import cli
    from polymodal.errors import PolymodalError, out_of_memory

    missing = tmp_path / "bad_alloc"
    assert cli.main(["index", str(missing), "--db", str(tmp_path / "x.idx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"polymodal: error: {missing}: not found; ") and "out of memory" not in err, err
    assert out_of_memory(PolymodalError("could not allocate memory/a.png")) is None
    # an OSError is read by its errno: its text names a file (the CLI's file-system line says that one)
    assert out_of_memory(FileNotFoundError(2, "No such file or directory", "/x/bad_alloc.npy")) is None
    assert out_of_memory(PermissionError(13, "Permission denied", "/cannot allocate memory/a")) is None
    assert out_of_memory(OSError(12, "Cannot allocate memory")) == "[Errno 12] Cannot allocate memory"
    assert out_of_memory(RuntimeError("std::bad_alloc")) == "std::bad_alloc"  # FAISS's


def test_a_feature_cache_filling_the_disk_says_to_free_space(tmp_path, monkeypatch, caplog):
    # numpy writes a real file through C and a full disk's error has no errno ("Not enough free space to write
    # 16777216 bytes after offset 128", seen on a 2 MB tmpfs): the warning said "set POLYMODAL_CACHE to a writable
    # folder" where writing through bytes (before ec8f897) said "No space left on device ... free some space there"
    import shutil

    from polymodal import cache

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_UNWRITABLE_WARNED", set())
    features = np.ones((4, 1024), np.float32)

    def full(fp, array, **kwargs):
        raise OSError(f"Not enough free space to write {array.nbytes} bytes after offset 128")

    monkeypatch.setattr(np.lib.format, "write_array", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(total=1 << 21, used=1 << 21, free=0))
    path = cache.cache_dir() / "features" / "image-0123456789abcdef.npy"
    with caplog.at_level(logging.WARNING, logger="polymodal.cache"):
        stored = cache.store_cached(path, features)
    assert np.array_equal(stored, features) and not isinstance(stored, np.memmap)
    assert list(path.parent.iterdir()) == []  # nothing half-written left behind
    [warning] = caplog.messages
    assert "(No space left on device)" in warning and "free some space there" in warning, warning
