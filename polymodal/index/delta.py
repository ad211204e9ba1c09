"""What vectors.faiss lacks: the rows committed since it was written, kept in SQLite, replayed on open.

A writer no longer reads and rewrites vectors.faiss on every commit (3 s for one photo at 1M images). Its rows go
into SQLite as before, and the ids it deletes into the table `removed` (with the generation of their commit). A
reader loads vectors.faiss and brings it up to its snapshot: it removes the ids deleted since, and keeps the rows
whose id is above the file's highest beside it (snapshot.py; in it, when the file is far behind). The writer rewrites
vectors.faiss only when that delta passes MERGE_FRACTION of the rows, then forgets the ids the new file no longer
holds.

Why the result is exact without comparing every id: ids come from AUTOINCREMENT (never reused), a row's vector never
changes, and writers commit one at a time. So a file written at any snapshot holds every row of today's table whose id
is at most its highest id, plus perhaps rows deleted since. A file written after the reader's snapshot has its
highest id above the snapshot's (refused) or holds only rows of the snapshot. Either way, after the replay the file
holds today's rows exactly when its count equals the table's; a file that fails that (an older polymodal deleted
without recording it, a file from elsewhere) is rebuilt from the BLOBs as before.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Iterator

import numpy as np

# Merge once the delta passes this share of the rows: at 100k photos about every 5,000 single uploads, and a fresh
# process's replay of that many rows from SQLite stays a small part of reading the file.
MERGE_FRACTION = 0.05
# Made when missing by every writer (older indexes get it too; older code ignores it and rewrites the whole file).
REMOVED_TABLE = "CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY, generation INTEGER NOT NULL)"
# One random token per generation, so that a cache is brought forward only along its own history: a copy of the index
# written over this one in place (the same file) and written to since has the same generations, with other photos
# under the same ids. The last KEEP_COMMITS are kept (a cache older than that loads the file).
COMMITS_TABLE = "CREATE TABLE IF NOT EXISTS commits (generation INTEGER PRIMARY KEY, token TEXT NOT NULL)"
KEEP_COMMITS = 1000
# meta key: the top id (see top_id) of the snapshot the writer last wrote vectors.faiss at
MERGED_TOP = "vectors_top_id"


def make_tables(con: sqlite3.Connection) -> None:
    """The writer's tables for the delta, made when missing (indexes from before them get them too)."""
    con.execute(REMOVED_TABLE)
    con.execute(COMMITS_TABLE)


def record_commit(con: sqlite3.Connection, generation: int) -> None:
    """A new token for this generation (inside the transaction that commits it)."""
    con.execute("INSERT OR REPLACE INTO commits (generation, token) VALUES (?, ?)", (generation, uuid.uuid4().hex))
    con.execute("DELETE FROM commits WHERE generation < ?", (generation - KEEP_COMMITS,))


def commit_token(con: sqlite3.Connection, generation: int) -> str | None:
    """The token of this generation, or None (an index from before the tokens, or a generation long gone)."""
    if not _has_table(con, "commits"):
        return None
    row = con.execute("SELECT token FROM commits WHERE generation = ?", (generation,)).fetchone()
    return row[0] if row else None


def record_removed(con: sqlite3.Connection, ids, generation: int) -> None:
    """Remember deleted row ids with the generation of the commit they leave in (inside that transaction)."""
    con.executemany("INSERT OR REPLACE INTO removed (id, generation) VALUES (?, ?)",
                    [(int(i), generation) for i in ids])


def top_id(con: sqlite3.Connection) -> int:
    """The highest id ever given to a row (deleted or not), as of this snapshot: rows above it are newer."""
    row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
    return int(row[0]) if row else 0


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def removed_ids(con: sqlite3.Connection, top: int, since_generation: int | None = None) -> list[int]:
    """Ids up to `top` deleted in commits after `since_generation` (every recorded one when None)."""
    if not _has_table(con, "removed"):
        return []
    where, args = ("id <= ?", (top,)) if since_generation is None else ("id <= ? AND generation > ?",
                                                                      (top, since_generation))
    return [r[0] for r in con.execute(f"SELECT id FROM removed WHERE {where}", args)]


def rows_above(con: sqlite3.Connection, top: int, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, float32 vectors) of the rows above `top`, 10,000 at a time (memory stays flat on a rebuild)."""
    cur = con.execute("SELECT id, vector FROM images WHERE id > ?", (top,))
    while rows := cur.fetchmany(10_000):
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        yield np.asarray([r[0] for r in rows], dtype=np.int64), vectors.astype(np.float32)


def rows_above_count(con: sqlite3.Connection, top: int) -> int:
    return con.execute("SELECT COUNT(*) FROM images WHERE id > ?", (top,)).fetchone()[0]


def row_count(con: sqlite3.Connection) -> int:
    return con.execute("SELECT COUNT(*) FROM images").fetchone()[0]


def small(delta: int, rows: int) -> bool:
    """Whether a file `delta` rows behind a table of `rows` can stay as it is."""
    return delta <= MERGE_FRACTION * rows


def pending(con: sqlite3.Connection, meta: dict) -> int | None:
    """The writer's count of rows vectors.faiss lacks, from SQLite alone (never reading the file): rows above the top
    of its last write plus recorded removals. None when it has not written the file (an older index): write it.
    A reader's write-back does not update this, so it only ever overcounts (an early merge, never a stale file)."""
    if MERGED_TOP not in meta:
        return None
    added = rows_above_count(con, int(meta[MERGED_TOP]))
    removed = con.execute("SELECT COUNT(*) FROM removed").fetchone()[0] if _has_table(con, "removed") else 0
    return added + removed


def merged(con: sqlite3.Connection, top: int, generation: int) -> None:
    """After vectors.faiss was written at this snapshot (by the writer, holding the writer lock; inside a
    transaction): record its top and forget the removals it already lacks. A crash before this costs only an early
    merge next time."""
    con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (MERGED_TOP, str(top)))
    if _has_table(con, "removed"):
        con.execute("DELETE FROM removed WHERE generation <= ?", (generation,))
