"""Stop 57, helper diffreview: the stop's key reader for TorchScript and legacy .pt files (clip_keys) walked a module
tree per path (a 771-byte archive sharing one submodule twice per level: 2**40 paths, a serve that never starts) and
built what a pickle asked of OrderedDict (OrderedDict(od), 7 bytes apart: a 121 kB legacy file took 291 MB) or a
pickle of any size (a deflated data.pkl of 20 MB of None is 20 kB; ~8x its size held); mine_pairs, made per
block, said a numpy broadcast error where the whole matrix said "similarity (N, C) and positive (N', C') shapes
differ"."""

from __future__ import annotations

import pickle
import signal
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from polymodal.data.pairs import Pair, PairSet
from polymodal.errors import PolymodalError
from polymodal.models import clip_keys
from polymodal.models.clip_keys import _LEGACY_MAGIC, is_clip_checkpoint
from polymodal.train.pretrain import mine_pairs


class _Node:  # pickles as a module whose two attributes are one submodule
    def __init__(self, child=None):
        self.child = child

    def __reduce__(self):
        return (_Node, (), {"a": self.child, "b": self.child} if self.child is not None else {"x": 1})


class _TooSlow(BaseException):  # not an Exception: the key reader would take it for a broken file
    pass


def _stop(*_):
    raise _TooSlow


def test_a_torchscript_tree_sharing_submodules_is_refused_at_once(tmp_path):
    node = _Node()
    for _ in range(40):
        node = _Node(node)
    path = tmp_path / "shared.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data.pkl", pickle.dumps(node, protocol=2))
        archive.writestr("m/constants.pkl", pickle.dumps(()))
    previous = signal.signal(signal.SIGALRM, _stop)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        assert is_clip_checkpoint(path) is False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _write_legacy(path, body: bytes) -> None:
    with open(path, "wb") as f:
        for obj in (_LEGACY_MAGIC, 1001, {}):
            pickle.dump(obj, f, protocol=2)
        f.write(body)


def _write_zip(path, body: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("m/data.pkl", body)


# one 20,000-item OrderedDict, then 100 copies of it (OrderedDict(od), appended to a list), then its attributes set
# from it 100 times over new ones; and a pickle of 20 MB of None (each 8 bytes on the unpickler's stack)
_ITEMS = b"(" + b"".join(b"J" + struct.pack("<i", i) + b"N" for i in range(20_000)) + b"u"
_COPIES = b"\x80\x02ccollections\nOrderedDict\nq\x00)R" + _ITEMS + b"q\x01]" + b"h\x00h\x01\x85Ra" * 100 + b"."
_BUILDS = (b"\x80\x02ccollections\nOrderedDict\nq\x00)R}" + _ITEMS + b"q\x01]"
           + b"h\x00)Rh\x01ba" * 100 + b".")
_NONES = b"\x80\x02" + b"N" * (4 << 20) + b"."  # past a _MAX_PICKLE of 1 MB


@pytest.mark.parametrize("write", [_write_legacy, _write_zip])
@pytest.mark.parametrize("body", [_COPIES, _BUILDS, _NONES], ids=["copies", "builds", "nones"])
def test_reading_a_torch_files_keys_takes_little_memory_whatever_it_pickles(tmp_path, monkeypatch, write, body):
    # its 16 MB would hold ~128 MB of Nones (8 bytes a byte)
    monkeypatch.setattr(clip_keys, "_MAX_PICKLE", 1 << 20, raising=False)
    path = tmp_path / "evil.pt"
    write(path, body)
    tracemalloc.start()
    try:
        assert is_clip_checkpoint(path) is False
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"{peak / 2**20:.0f} MB"


def test_mine_pairs_says_mismatched_embeddings_in_the_whole_matrix_words():
    pairs = PairSet.from_pairs([Pair(f"i{i % 4}", f"caption {i}") for i in range(8)])
    rng = np.random.default_rng(0)
    images, captions = rng.standard_normal((4, 8), dtype=np.float32), rng.standard_normal((9, 8), dtype=np.float32)
    with pytest.raises(PolymodalError, match=r"^similarity \(4, 9\) and positive \(4, 8\) shapes differ$"):
        mine_pairs(images, captions, pairs, 2)
    with pytest.raises(PolymodalError, match=r"^similarity \(3, 8\) and positive \(4, 8\) shapes differ$"):
        mine_pairs(images[:3], captions[:8], pairs, 2)
