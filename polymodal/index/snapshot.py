"""A process's vectors of one index snapshot, kept across searches and brought forward commit by commit.

Copying a FAISS index to add one upload cost about 0.1 s at 100k photos and 1 s at 1M (the copy, then another as
FAISS grows its buffer). So the rows added since the index was made stay beside it in a small matrix (`recent`),
searched exactly (faiss.knn) and merged into each answer. Removing a row the index holds copied it too (1 GB at 1M
photos, and in a server a new move onto 2 MB pages): its id is now hidden instead, each search asking FAISS for as
many more hits as there are hidden ids and dropping theirs, until HIDE_AT_MOST pile up and one copy compacts them.
Writing vectors.faiss copies the index, once. A snapshot never changes: searches in other threads use it without a
lock while a newer one is made.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from polymodal.index import delta

# Removed ids a cached index hides before one copy compacts them: a search then asks FAISS for k + this many hits,
# at 1M rows 1.0-1.06x the time of a search hiding none (benchmarks/index_hidden_ids.py), where a copy took 0.8 s.
HIDE_AT_MOST = 1024
_NO_IDS = np.zeros(0, np.int64)


@dataclass(frozen=True)
class Snapshot:
    state: tuple  # (uid, generation, meta.sqlite's (st_dev, st_ino)) of the index it holds
    index: Any  # faiss IndexIDMap2
    top: int  # delta.top_id of that generation: rows above it are newer
    recent_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    recent: np.ndarray | None = None  # [len(recent_ids), dim] float32
    hidden: np.ndarray = field(default_factory=lambda: _NO_IDS)  # sorted ids the index holds that were removed

    @property
    def ntotal(self) -> int:
        return self.index.ntotal - len(self.hidden) + len(self.recent_ids)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top `k` (at most ntotal, at least 1) inner products of each query row -> (scores, ids), best first."""
        if self.index.ntotal:
            # k more than the hidden ids: at least k hits of the index's own rows remain however many of them rank
            scores, ids = self.index.search(q, min(k + len(self.hidden), self.index.ntotal))
        else:
            scores, ids = np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if len(self.hidden):
            gone = np.isin(ids, self.hidden)
            scores, ids = np.where(gone, -np.inf, scores).astype(np.float32), np.where(gone, -1, ids)
        elif not len(self.recent_ids):
            return scores, ids
        if len(self.recent_ids):
            # faiss.knn scans in blocks: q @ recent.T whole held queries x rows (4 GB for 5,000 queries beside 50k)
            near, best = faiss.knn(q, self.recent, min(k, len(self.recent_ids)), metric=faiss.METRIC_INNER_PRODUCT)
            scores = np.concatenate([scores, near], axis=1)
            ids = np.concatenate([ids, self.recent_ids[best]], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def single(self, copy: bool = True) -> Any:
        """One FAISS index of every row (what vectors.faiss holds): the index itself, or a copy without the hidden
        ids and with `recent` added (with copy=False, the index itself changed so: only while no search uses it)."""
        if not len(self.recent_ids) and not len(self.hidden):
            return self.index
        index = faiss.clone_index(self.index) if copy else self.index
        if len(self.hidden):
            index.remove_ids(self.hidden)  # one compaction, however many ids
        if len(self.recent_ids):
            index.add_with_ids(self.recent, self.recent_ids)
        return index

    def caught_up(self, con: sqlite3.Connection, state: tuple, dim: int) -> "Snapshot | None":
        """This snapshot brought to the one `con` reads (a later generation of the same index), or None when that
        does not give the table's rows (removals it can't see: the caller loads the file instead)."""
        found = forward(con, state, dim, self.index, self.top, self.state[1], self.recent_ids, self.recent,
                        hidden=self.hidden)
        return found and found[0]


def forward(con: sqlite3.Connection, state: tuple, dim: int, index, top: int, since: int | None,
            recent_ids: np.ndarray = _NO_IDS, recent: np.ndarray | None = None, shared: bool = True,
            hidden: np.ndarray = _NO_IDS) -> "tuple[Snapshot, int] | None":
    """`index` (as of `top`, with `recent` beside it, `hidden` ids removed) brought to the snapshot `con` reads: the
    ids deleted in commits after generation `since` (every recorded one when None: a file) leave, and the rows above
    `top` go beside it. -> (that snapshot, how many rows it removed and added), or None when the result is not the
    table's rows. `shared`: others search `index` (a cache), so its removed rows are hidden (a copy compacts them
    past HIDE_AT_MOST); a file just read is changed in place."""
    now = delta.top_id(con)
    if top > now:  # written after this snapshot: holds rows this reader must not see
        return None
    removed, gone = 0, np.asarray(delta.removed_ids(con, top, since), dtype=np.int64)
    if gone.size and len(recent_ids):  # rows beside leave without touching the index (a served upload deleted)
        stay = ~np.isin(recent_ids, gone)
        removed, recent_ids, recent = int((~stay).sum()), recent_ids[stay], recent[stay]
    # only ids the index holds: a file a reader wrote back lacks ids `removed` keeps until the writer merges (counted,
    # every next reader rewrote the file), and a compaction is a copy of the whole index when others search it
    held = gone[np.isin(gone, faiss.vector_to_array(index.id_map))] if gone.size else gone
    removed += held.size
    hidden = np.union1d(hidden, held)
    if hidden.size and (not shared or hidden.size > HIDE_AT_MOST):
        index = faiss.clone_index(index) if shared else index
        index.remove_ids(hidden)  # one compaction, however many ids
        hidden = _NO_IDS
    # beside the index, or (a file far behind) into it, 10,000 rows at a time: memory stays flat
    beside = shared or delta.small(delta.rows_above_count(con, top), index.ntotal)
    chunks, added = [], 0
    for new_ids, new_vectors in delta.rows_above(con, top, dim):
        if beside:
            chunks.append((new_ids, new_vectors))
        else:
            index.add_with_ids(new_vectors, new_ids)
        added += len(new_ids)
    ids = np.concatenate([recent_ids, *(i for i, _ in chunks)])
    vectors = np.concatenate([recent if recent is not None else np.zeros((0, dim), np.float32),
                              *(v for _, v in chunks)])
    if index.ntotal - hidden.size + len(ids) != delta.row_count(con):
        return None
    grown = Snapshot(state, index, now, ids, vectors, hidden)
    # many rows beside (a long update elsewhere): one copy keeps every later search fast. Beside a file rather than
    # in it: FAISS grows its buffer by copying it whole (2 GB held at 1M photos for one row)
    if not delta.small(len(ids), index.ntotal):
        grown = Snapshot(state, grown.single(copy=shared), grown.top)
    return grown, removed + added


def rebuild(con: sqlite3.Connection, dim: int) -> Any:
    """A FAISS index of every row, from the BLOBs."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    for ids, vectors in delta.rows_above(con, 0, dim):
        index.add_with_ids(vectors, ids)
    return index
