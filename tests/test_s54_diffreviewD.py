"""Text features are written to their cache file batch by batch (review s54): since a run's captions, hard negatives
and validation captions became one list (TextRows), the whole list's features were built in memory before the file
was written, 2.3x the peak of the largest of the lists it replaced (repro text_peak.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from polymodal.train.features import text_features


class _Tower:
    """text_features' view of a model: 384 values a text that say which text it was."""

    text_cache_signature = "s54-diffreviewD"

    def __init__(self, fail_after: int | None = None) -> None:
        self.batches, self.fail_after = 0, fail_after

    def text_tower(self, texts):
        self.batches += 1
        if self.fail_after is not None and self.batches > self.fail_after:
            raise KeyboardInterrupt  # a run stopped midway
        return torch.tensor([[float(t.split()[-1])] * 384 for t in texts])


def _texts(n: int) -> list[str]:
    return [f"caption {'long ' * (i % 7)}{i}" for i in range(n)]  # several lengths: batches cut out of order


def test_text_features_are_written_batch_by_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    texts = _texts(6000)
    whole = len(texts) * 384 * 4  # the list's features, float32
    tracemalloc.start()
    try:
        feats = text_features(_Tower(), texts, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < whole / 3  # was more than the whole array
    assert isinstance(feats, np.memmap) and feats.dtype == np.float32 and feats.shape == (6000, 384)
    np.testing.assert_array_equal(feats[:, 0], np.arange(6000))
    np.testing.assert_array_equal(feats[:, 383], np.arange(6000))
    again = _Tower()
    np.testing.assert_array_equal(text_features(again, texts, progress=False), feats)
    assert again.batches == 0  # served from the file

    # stopped midway: no entry and no temporary left behind
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "stopped"))
    with pytest.raises(KeyboardInterrupt):
        text_features(_Tower(fail_after=2), texts, progress=False)
    assert not [p for p in (tmp_path / "stopped").rglob("*") if p.is_file()]

    # a cache folder that cannot be written: the features in memory, as before
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "file"))
    kept = text_features(_Tower(), texts[:300], progress=False)
    np.testing.assert_array_equal(kept[:, 0], np.arange(300))
