"""Token-state caches (VQA questions, pretraining captions): ``[N, W, D]`` float16 per text, padding zeroed, written to
the cache file a batch at a time as they are encoded. The whole array, and before it every batch's states, were held
in memory first: 1.8x the file at the peak, 4.2 GB for 100,000 questions 32 word pieces wide (~18 GB for 440,000;
repro tokcache/peak.py)."""

from __future__ import annotations

import numpy as np

from polymodal.cache import CacheFill

# values per chunk when a wider batch widens the file: a float16 copy of one chunk (8 MB) at a time
COPY_VALUES = 1 << 22


class StatesFill:
    """``rows`` texts' token states written by ``write(their row numbers, [b, w, D] states)`` into a CacheFill at
    ``path`` (in memory without one). The array's width W is its widest batch's: given (``width``, ``dim``) the
    file is made at once; else at the first batch, which had best be the widest (the last in order of length), for
    a wider one later makes the file again, wider, copying its rows over a chunk at a time. ``dim`` alone: the
    states' width, for the empty array of no texts."""

    def __init__(self, path, rows: int, width: int = 0, dim: int = 0) -> None:
        self.path, self.rows, self.dim, self.fill = path, rows, dim, None
        if width and dim:
            self.fill = CacheFill(path, (rows, width, dim), np.float16)

    def write(self, rows, states: np.ndarray) -> None:
        if self.fill is None or states.shape[1] > self.fill.shape[1]:
            self._widen(states.shape[1], states.shape[2])
        block = np.zeros((len(rows), *self.fill.shape[1:]), np.float16)
        block[:, : states.shape[1]] = states
        for row, state in zip(rows, block):  # a batch's rows are apart (cut in order of length)
            self.fill.write(int(row), state[None])

    def _widen(self, width: int, dim: int) -> None:
        old, self.fill = self.fill, CacheFill(self.path, (self.rows, width, dim), np.float16)
        if old is None:
            return
        try:
            size = old.shape[1] * dim  # values per row
            step = max(1, COPY_VALUES // size)
            for start in range(0, self.rows, step):
                count = min(step, self.rows - start)
                block = old.values(start * size, count * size).reshape(count, old.shape[1], dim)
                self.fill.write(start, np.pad(block, ((0, 0), (0, width - old.shape[1]), (0, 0))))
        finally:
            old.discard()

    def discard(self) -> None:
        if self.fill is not None:
            self.fill.discard()

    def finish(self) -> np.ndarray:
        """The array: memory-mapped from ``path``, or in memory where it could not be written (or without texts)."""
        if self.fill is None:  # no text: no batch gave a width ([0, 1, D], as encode_questions gives for none)
            return np.zeros((self.rows, 1, self.dim), np.float16)
        return self.fill.finish()
