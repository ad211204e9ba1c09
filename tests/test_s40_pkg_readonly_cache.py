"""A cache folder that cannot be written (a container's read-only HOME, POLYMODAL_CACHE on a read-only mount) only
costs time: built-in models still load and answer, with one warning naming POLYMODAL_CACHE.

The unwritable folder is one under a regular file, which fails for root too (chmod does not stop root)."""

import logging
import os
import subprocess
import sys

import numpy as np
import torch


def _unwritable(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "a-file" / "cache"))


class _Tower:
    dim = 4

    def __call__(self, texts):
        return torch.ones(len(texts), self.dim)


def test_class_prompts_are_computed_when_the_cache_cannot_be_written(tmp_path, monkeypatch, caplog):
    from polymodal.cache import cache_dir
    from polymodal.models.conse import class_prompt_matrix

    _unwritable(tmp_path, monkeypatch)
    assert cache_dir() == tmp_path / "a-file" / "cache"  # no error for a folder it cannot make
    with caplog.at_level(logging.WARNING):
        matrix = class_prompt_matrix(_Tower())
    assert matrix.shape == (1000, 4) and np.allclose(np.linalg.norm(matrix, axis=1), 1)
    assert "POLYMODAL_CACHE" in caplog.text


def test_feature_cache_falls_back_to_memory(tmp_path, monkeypatch):
    from polymodal.cache import load_cached, store_cached

    _unwritable(tmp_path, monkeypatch)
    path, cached = load_cached("k", "text-bank")
    assert cached is None
    out = store_cached(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert out.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_info_works_with_an_unwritable_cache(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    env = {**os.environ, "POLYMODAL_CACHE": str(tmp_path / "a-file" / "cache")}
    run = subprocess.run([sys.executable, "-m", "polymodal", "info"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "lite" in run.stdout
