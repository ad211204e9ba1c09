"""A similarity product ``a @ b.T`` ([A, B] float32) served a block of rows (or of columns) at a time, so that hard-
negative mining and retrieval ranks never hold all of it (600k captions x 120k images: 288 GB). A block is bit-
identical to the same cells of the whole product on numpy's OpenBLAS, except for products of 1-3 rows (gemv,
small-matrix kernels; repro: lab-s57 pretrainscale/repro/blockid.py): a block holds 64+ rows, a short last block
overlaps the one before it, and a small product is made whole, as it always was."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

# cells a block holds (256 rows of 20,000), the most and the fewest rows (600k wide: 64 rows, ~1.2 GB to mine)
BLOCK_CELLS, BLOCK_ROWS, BLOCK_MIN_ROWS = 256 * 20_000, 256, 64


class Product:
    """``a @ b.T`` by blocks: ``rows(i, j)`` its rows i..j, ``columns(i, j)`` its columns i..j as rows."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a, self.b = a, b
        self.whole = a @ b.T if len(a) * len(b) <= BLOCK_CELLS else None

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.whole[start:stop] if self.whole is not None else self.a[start:stop] @ self.b.T

    def columns(self, start: int, stop: int) -> np.ndarray:
        # columns of the same product, not rows of b @ a.T: that product may round differently
        return self.whole[:, start:stop].T if self.whole is not None else (self.a @ self.b[start:stop].T).T

    def columns_at(self, index: np.ndarray) -> np.ndarray:
        """Columns ``index`` (any, in any order) as rows; a block of fewer than 64 repeats its last column."""
        if self.whole is not None:
            return self.whole[:, index].T
        padded = np.concatenate([index, np.repeat(index[-1:], BLOCK_MIN_ROWS - len(index))])
        return (self.a @ self.b[padded].T).T[: len(index)]


def blocks(queries: int, width: int) -> Iterator[tuple[int, int, int]]:
    """(start, first, stop) of each block of ``queries`` rows ``width`` wide: rows start..stop are computed, rows
    first..stop are new (a short last block overlaps the one before it: start < first)."""
    rows = min(queries, max(BLOCK_MIN_ROWS, min(BLOCK_ROWS, BLOCK_CELLS // max(width, 1))))
    for first in range(0, queries, max(rows, 1)):
        stop = min(first + rows, queries)
        yield stop - rows, first, stop


def per_block(fn: Callable[[int, int], np.ndarray], queries: int, width: int) -> np.ndarray:
    """``fn(i, j)`` (one result row per query i..j of a block ``width`` wide) over all ``queries``, concatenated."""
    if not queries:
        return fn(0, 0)
    return np.concatenate([fn(start, stop)[first - start :] for start, first, stop in blocks(queries, width)])
