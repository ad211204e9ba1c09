"""Review of the image cache filled batch by batch (cache.CacheFill): a disk that fills up while the cache is written
gives the features in memory, all of them, as before. Through a buffered file the failed bytes stayed in the buffer:
the read-back's seek and the close flushed them again, so close's "No space left" ended the run (and the rows so far
would have been zeros)."""

import errno
import io

import numpy as np
import pytest

from polymodal import cache
from polymodal.train.features import image_features
from tests.test_s53_bigcache import _Model, _expected, _photos


class _FillingDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: the write that reaches the end takes what fits (as write(2) does),
    the next one fails."""

    room = 0

    def write(self, data):
        if _FillingDisk.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        data = memoryview(data)[: _FillingDisk.room]
        _FillingDisk.room -= len(data)
        return super().write(data)


def _fdopen(fd, mode, buffering=-1):
    raw = _FillingDisk(fd, "r+")
    return raw if buffering == 0 else io.BufferedRandom(raw)


@pytest.mark.parametrize("room", [0, 100, 128 + 2 * 4 * 25088 - 3000])  # full, in the header, in batch 2
def test_a_disk_that_fills_up_gives_every_feature_in_memory(tmp_path, monkeypatch, room):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache.os, "fdopen", _fdopen)
    monkeypatch.setattr(_FillingDisk, "room", room)
    feats = image_features(_Model(), _photos(tmp_path, 10), batch_size=4, progress=False, skip_unreadable=True)
    assert not isinstance(feats, np.memmap)
    np.testing.assert_array_equal(feats, _expected(10))
    assert not list((tmp_path / "cache" / "features").iterdir())  # the temporary is gone
