"""Hard negatives from one pass over the [images, captions] similarity product, a block of image rows at a time:
each row block gives its images' top k captions and updates each caption's running top k images. Mining each
direction apart computed the product twice and scored every cell with a float64 copy and a full-width argpartition
(COCO, 120k images x 600k captions: ~4 h on 2 cores). Results are those of `top_columns` on the whole product:
a query whose k + 1 best scores are not all distinct (an exact tie, NaN) is mined again by `top_columns` itself."""

from __future__ import annotations

import numpy as np
import torch

from polymodal.product_blocks import BLOCK_CELLS, BLOCK_MIN_ROWS, Product, blocks
from polymodal.train.caption_matches import CaptionMatches


def top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """``[Q, k]``: the columns of each row's k highest scores, highest first; exact ties in argpartition's order
    (then a stable sort by score), the order mining has always given. Excluded cells are -inf."""
    scores = np.asarray(scores, dtype=np.float64)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _settled(values: np.ndarray) -> np.ndarray:
    """[Q]: a row's k + 1 best scores (highest first) all differ, so its top k and their order are the same
    whichever way they are found (False on NaN, which `top_columns` puts last and torch.topk first)."""
    return (values[:, :-1] > values[:, 1:]).all(axis=1)


def _row_tops(block: np.ndarray, k: int) -> np.ndarray:
    """`top_columns(block, k)`, by torch.topk (both cores, no float64 copy) where no tie can change it."""
    values, index = torch.topk(torch.from_numpy(block), min(k + 1, block.shape[1]), dim=1)
    out, settled = index[:, :k].numpy(), _settled(values.numpy())
    if not settled.all():
        out[~settled] = top_columns(block[~settled], k)
    return out


# hits a merged column past which a block is merged whole (one sort), not inserted a hit at a time
DENSE = 8


class _ColumnTops:
    """The k + 1 highest scores of each column over the rows seen so far (highest first) and their rows. A block
    cell enters only if it beats its column's worst kept score: after the first blocks, a few cells a block."""

    def __init__(self, columns: int, keep: int, dtype: np.dtype) -> None:
        self.values = np.full((columns, keep), -np.inf, dtype=dtype)
        self.rows = np.zeros((columns, keep), dtype=np.int64)
        self.nan = np.zeros(columns, dtype=bool)  # a NaN score: the column is mined again (NaN ranks last there)

    def add(self, block: np.ndarray, first: int) -> None:
        """Rows ``first``.. of the product."""
        cols = np.flatnonzero(~(block.max(axis=0) <= self.values[:, -1]))  # NaN: max is NaN
        sub = block[:, cols]
        hits = ~(sub <= self.values[cols, -1])
        if hits.sum() > DENSE * len(cols):  # the first blocks: most cells enter
            step = max(1, BLOCK_CELLS // (len(block) + self.values.shape[1]))  # columns merged at once
            for part in range(0, len(cols), step):
                self._merge(cols[part : part + step], sub[:, part : part + step], first)
            return
        hit_col, hit_row = np.nonzero(hits.T)  # by column, then row
        score = sub[hit_row, hit_col]
        nan = np.isnan(score)
        self.nan[cols[hit_col[nan]]] = True  # never kept: a column is mined again
        hit_col, hit_row, score = hit_col[~nan], hit_row[~nan], score[~nan]
        # the t-th hit of each column is inserted in round t: a round touches a column at most once
        starts = np.flatnonzero(np.diff(hit_col, prepend=-1))
        nth = np.arange(len(hit_col)) - np.repeat(starts, np.diff(starts, append=len(hit_col)))
        order = np.argsort(nth, kind="stable")
        for batch in np.split(order, np.cumsum(np.bincount(nth))[:-1]) if len(order) else ():
            self._insert(cols[hit_col[batch]], score[batch], first + hit_row[batch])

    def _merge(self, cols: np.ndarray, sub: np.ndarray, first: int) -> None:
        """All of ``sub`` (rows ``first``.. of ``cols``) with the kept scores: the best of each column kept."""
        values = np.concatenate([self.values[cols], sub.T], axis=1)
        nan = np.isnan(values)
        self.nan[cols[nan.any(axis=1)]] = True
        values[nan] = -np.inf
        keep = self.values.shape[1]
        top = torch.topk(torch.from_numpy(values), keep, dim=1).indices.numpy()
        kept = np.take_along_axis(self.rows[cols], np.minimum(top, keep - 1), axis=1)
        self.rows[cols] = np.where(top < keep, kept, first + top - keep)
        self.values[cols] = np.take_along_axis(values, top, axis=1)

    def _insert(self, cols: np.ndarray, score: np.ndarray, row: np.ndarray) -> None:
        """One score into each of ``cols`` (distinct), after the kept scores at least as high; the worst drops."""
        values, rows, score = self.values[cols], self.rows[cols], score[:, None]
        at = (values >= score).sum(axis=1, keepdims=True)  # keep: a score this block's earlier hits outdid
        rank = np.arange(values.shape[1])
        self.values[cols] = np.where(rank < at, values, np.where(rank == at, score, np.roll(values, 1, axis=1)))
        self.rows[cols] = np.where(rank < at, rows, np.where(rank == at, row[:, None], np.roll(rows, 1, axis=1)))


def mine(image_emb: np.ndarray, caption_emb: np.ndarray, matches: CaptionMatches, k_captions: int,
         k_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(each image's ``k_captions`` most similar non-matching captions [N, k], each caption's ``k_images`` most
    similar non-matching images [C, k]), most similar first."""
    product, n, c = Product(image_emb, caption_emb), len(image_emb), len(caption_emb)
    hard_captions = np.empty((n, k_captions), dtype=np.int64)
    scores = np.result_type(image_emb, caption_emb)
    scores = scores if scores.kind == "f" else np.dtype(np.float64)  # an integer product holds no -inf (as before)
    columns = _ColumnTops(c, min(k_images + 1, n), scores)
    for start, first, stop in blocks(n, c):
        # masked in place below: the whole product's rows are copied
        block = product.rows(start, stop)[first - start :].astype(scores, copy=product.whole is not None)
        block[matches.image_captions(np.arange(first, stop))] = -np.inf
        hard_captions[first:stop] = _row_tops(block, k_captions)
        columns.add(block, first)
    hard_images = np.ascontiguousarray(columns.rows[:, :k_images])
    unsettled = np.flatnonzero(~_settled(columns.values) | columns.nan)  # ties, NaN: from the product's columns
    for group in (unsettled[i : i + BLOCK_MIN_ROWS] for i in range(0, len(unsettled), BLOCK_MIN_ROWS)):
        hard_images[group] = top_columns(np.where(matches.caption_rows(group), -np.inf, product.columns_at(group)),
                                         k_images)
    return hard_captions, hard_images
