"""The streaming ShardDataset reports skipped samples as one warning and one count per pass, not one per sample."""

from __future__ import annotations

import logging

from polymodal.data.datasets import ShardDataset
from polymodal.data.images import ImageTransform
from test_s38_data_review import _jpg, _shard


def test_a_stream_of_bad_samples_warns_once_then_counts(tmp_path, caplog):
    members = [(f"{i:03d}.jpg", _jpg("red")) for i in range(12)]  # no captions
    members += [("050.jpg", b"not a jpeg"), ("050.txt", b"broken")]  # undecodable
    members += [("100.jpg", _jpg("blue")), ("100.txt", b"blue")]
    _shard(tmp_path / "s.tar", members)
    ds = ShardDataset(str(tmp_path / "s.tar"), ImageTransform(8), shuffle_buffer=0)
    with caplog.at_level(logging.WARNING):
        got = [caption for _, caption, _ in ds]
    assert got == ["blue"] and len(ds.skipped) == 13
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # the first skip, then the pass's count
    assert "later skips are counted" in warnings[0] and "skipped 13 samples" in warnings[1]
    caplog.clear()
    ds.set_epoch(1)
    with caplog.at_level(logging.WARNING):
        list(ds)
    assert len(ds.skipped) == 26 and len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2
