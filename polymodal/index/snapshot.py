"""A process's vectors of one index snapshot, kept across searches and brought forward commit by commit.

Copying a FAISS index to add one upload cost about 0.1 s at 100k photos and 1 s at 1M (the copy, then another as
FAISS grows its buffer). So the rows added since the index was made stay beside it in a small matrix (`recent`),
searched exactly with numpy and merged into each answer. Only a removal, or writing vectors.faiss, copies the index,
once. A snapshot never changes: searches in other threads use it without a lock while a newer one is made.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from polymodal.index import delta


@dataclass(frozen=True)
class Snapshot:
    state: tuple  # (uid, generation, meta.sqlite's (st_dev, st_ino)) of the index it holds
    index: Any  # faiss IndexIDMap2
    top: int  # delta.top_id of that generation: rows above it are newer
    recent_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    recent: np.ndarray | None = None  # [len(recent_ids), dim] float32

    @property
    def ntotal(self) -> int:
        return self.index.ntotal + len(self.recent_ids)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top `k` (at most ntotal, at least 1) inner products of each query row -> (scores, ids), best first."""
        if self.index.ntotal:
            scores, ids = self.index.search(q, min(k, self.index.ntotal))
        else:
            scores, ids = np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if not len(self.recent_ids):
            return scores, ids
        s = q @ self.recent.T
        best = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]
        scores = np.concatenate([scores, np.take_along_axis(s, best, 1)], axis=1)
        ids = np.concatenate([ids, self.recent_ids[best]], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def single(self) -> Any:
        """One FAISS index of every row (what vectors.faiss holds): the index itself, or a copy with `recent` added."""
        if not len(self.recent_ids):
            return self.index
        copy = faiss.clone_index(self.index)
        copy.add_with_ids(self.recent, self.recent_ids)
        return copy

    def caught_up(self, con: sqlite3.Connection, state: tuple, dim: int) -> "Snapshot | None":
        """This snapshot brought to the one `con` reads (a later generation of the same index), or None when that
        does not give the table's rows (removals it can't see: the caller loads the file instead)."""
        top, since = delta.top_id(con), self.state[1]
        if delta.removed_ids(con, self.top, since):  # a removal compacts a copy, once
            copy = faiss.clone_index(self.index)
            if len(self.recent_ids):
                copy.add_with_ids(self.recent, self.recent_ids)
            return Snapshot(state, copy, top) if delta.replay(con, copy, self.top, dim, since) is not None else None
        chunks = list(delta.rows_above(con, self.top, dim))
        ids = np.concatenate([self.recent_ids, *(i for i, _ in chunks)])
        recent = np.concatenate([self.recent if self.recent is not None else np.zeros((0, dim), np.float32),
                                 *(v for _, v in chunks)])
        if self.index.ntotal + len(ids) != delta.row_count(con):
            return None
        grown = Snapshot(state, self.index, top, ids, recent)
        # a long update elsewhere can add many rows: past a few percent, one copy keeps every later search fast
        return grown if delta.small(len(ids), self.index.ntotal) else Snapshot(state, grown.single(), top)
