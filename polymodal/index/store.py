"""A persistent, incrementally updated image index in one folder.

Layout of the folder (the CLI's --db):
  meta.sqlite    the source of truth: one row per image (path, size, mtime, ctime, sha256, float32 vector BLOB) and
                 index-level meta (model, dim, times, generation)
  vectors.faiss  a derived cache for fast search: IndexIDMap2(IndexFlatIP), ids = SQLite row ids; it may lag the
                 table by a few percent of its rows, which readers replay from SQLite (delta.py)
  index.lock     held by the one writer (process or thread) allowed to write; only writers take it
  vectors.lock   held while vectors.faiss is written: by a writer after a commit that took the lag past 5%, or by a
                 reader writing back a cache it rebuilt or brought far forward (never index.lock, so searches never
                 make a writer fail with IndexBusy)

Crash safety: an update commits its work in SQLite transactions about a minute apart (COMMIT_EVERY_S), so a
crash, kill or Ctrl-C loses only about the last minute and a re-run embeds only the rest. Every commit is a
consistent index: a changed file's old row leaves in the commit that brings its new one, the rows of deleted
files leave together in the first commit, and each commit bumps the generation. Readers (WAL) only ever see
committed states. A row's vector never changes (a changed file gets a new row) and ids are never reused
(AUTOINCREMENT), so vectors.faiss needs no rewrite per commit: readers add the rows above its highest id and remove
the ids recorded as deleted since (delta.py), and the writer replaces it atomically once that delta passes 5% of the
rows. A file the replay cannot bring to the table's rows (deleted, from elsewhere) is rebuilt from the BLOBs. Files
that failed to decode are remembered (table failures) and not read again until they change. A file is unchanged
while its size, mtime and ctime are; when only the times changed its sha256 decides (read, not decoded).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import numbers
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections import namedtuple
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np
from filelock import FileLock, Timeout

from polymodal.cache import atomic_write_with, check_creatable, nearly_full
from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError
from polymodal.index import delta
from polymodal.index.hits_view import Hits
from polymodal.index.pages import advise_huge_pages
from polymodal.index.scan import ImageFile, canonical_path, file_sha256, image_file, scan_images, unlisted_folders
from polymodal.index.snapshot import Snapshot, forward, rebuild
from polymodal.models.inputs import as_images, check_count
from polymodal.progress import progress_bar
from polymodal.registry import require_embedding

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE,"
    " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, vector BLOB NOT NULL)",
)
# Made when missing by every update, so indexes from before it get it too (no format change: older code ignores it).
_FAILURES = ("CREATE TABLE IF NOT EXISTS failures (path TEXT PRIMARY KEY, size INTEGER NOT NULL,"
             " mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL, failed TEXT NOT NULL)")
# The same way: the server looks uploads up by content (a photo the index holds is not added twice)
_BY_CONTENT = "CREATE INDEX IF NOT EXISTS images_sha256 ON images (sha256)"
# what an index folder may hold (uploads/: the service's, written before its first update)
_OWN_NAMES = {"meta.sqlite", "meta.sqlite-wal", "meta.sqlite-shm", "meta.sqlite-journal", "vectors.faiss", "index.lock",
              "vectors.lock", "uploads"}
# ctime_ns: added by every update to indexes from before it (ALTER TABLE; older code writes NULL there, and a NULL is
# trusted on size + mtime once, then filled in, so the first update after it reads no file)
_CTIME = "ctime_ns"
_Row = namedtuple("_Row", "id size mtime_ns sha256 ctime_ns")
_Failure = namedtuple("_Failure", "size mtime_ns reason failed ctime_ns")
_COLUMNS = {"images": ("id, size, mtime_ns, sha256, ctime_ns", _Row),
            "failures": ("size, mtime_ns, reason, failed, ctime_ns", _Failure)}

# Commits come by time, not by count: the work a crash loses stays about a minute whatever the model's speed (a GPU
# embeds thousands of images a minute, a CPU a few dozen), and live readers catch their FAISS cache up to each
# commit from SQLite (delta.py), which once a minute stays cheap.
COMMIT_EVERY_S = 60.0
# How long a writer waits, after its commit, for a reader that is writing back vectors.faiss (a few seconds even for
# a large index); past it the writer leaves the file, which the next open brings up to date from SQLite.
SAVE_WAIT_S = 60.0


def _file_paths(paths, method: str) -> list:
    """add()'s and remove()'s argument: one path or an iterable of them -> a list; anything else one error (None, a
    number or bytes would otherwise be a raw TypeError, or a path read letter by letter)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    if not isinstance(paths, Iterable) or isinstance(paths, (bytes, np.ndarray)):
        raise PolymodalError(f"{method}() takes image file paths, got {type(paths).__name__}; the index keeps paths "
                             "so it can notice later changes: save in-memory images as files and pass those")
    paths = list(paths)
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise PolymodalError(f"{method}() takes image file paths, got a {type(p).__name__}; save in-memory "
                                 "images as files and pass their paths")
    return paths


def _row_ids(ids) -> list[int]:
    """remove_ids()'s argument: one id or an iterable of them -> a list of ints. Anything but whole numbers is refused:
    int() read "12" digit by digit as rows 1 and 2, and cut 3.9 down to row 3, removing rows no one named."""
    if isinstance(ids, numbers.Integral) and not isinstance(ids, bool):
        ids = [ids]
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise PolymodalError(f"remove_ids() takes integer row ids (a hit's .id), got {type(ids).__name__} {ids!r:.40}")
    ids = list(ids)
    for i in ids:  # numpy integers pass (numbers.Integral); bools, floats and digit strings do not
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise PolymodalError(f"remove_ids() takes integer row ids (a hit's .id), got {type(i).__name__} {i!r:.40}")
    return [int(i) for i in ids]


class IndexModelMismatch(PolymodalError):
    """The index was built with another model than the one at hand."""


class IndexDamaged(PolymodalError):
    """meta.sqlite is no readable SQLite database any more (overwritten, cut short, a failing disk)."""


class IndexBusy(PolymodalError):
    """Another writer (another process, or another thread of this one) holds the index's writer lock: a passing
    condition, worth retrying."""


@dataclass
class Hit:
    """One search result: ``path``, ``score`` (cosine similarity to the query, -1 to 1; hit lists come best first),
    ``id`` (its row, for remove_ids) and ``host`` (Qdrant collections only)."""

    path: str
    score: float  # cosine similarity
    host: str | None = None  # the machine that holds the file (Qdrant collections fed by several machines)
    id: int | str | None = None  # the index's row id (a Qdrant collection's point id)


@dataclass
class UpdateReport:
    """What update() / add() did: counts of files, and the (path, reason) of each file skipped."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def summary(self) -> str:
        return (
            f"added {self.added}, updated {self.updated}, removed {self.removed}, "
            f"unchanged {self.unchanged}, skipped {len(self.skipped)}"
        )


class SearchByModel:
    """search_text / search_image over a store's search(vectors, k) and check_model(model)."""

    def search_text(self, model, text: str, k: int = 10) -> Hits:
        """One query string; for several, search(model.encode_text(queries), k) returns one hit list per query."""
        if not isinstance(text, str):
            raise PolymodalError(f"search_text takes one query string, got {type(text).__name__}; for several "
                                 "queries use search(model.encode_text(queries), k)")
        if is_blank(text):  # as the CLI and the server refuse it: a blank text's vector ranks photos by nothing
            raise PolymodalError("the text query is empty; pass some words, e.g. search_text(model, 'a dog')")
        # a name ("lite") or a VQA model: one error, not an AttributeError (from a Qdrant collection, one dressed as
        # a server error)
        require_embedding(model)
        self.check_model(model)
        return self.search(model.encode_text([text]), k)[0]

    def search_image(self, model, image: Any, k: int = 10) -> Hits:
        """One query image (a path, bytes, file object, PIL image or array); for several,
        search(model.encode_image(images), k) returns one hit list per image."""
        images = as_images(image)
        if len(images) != 1:  # a list of images read as one failed with "cannot read an image from list"
            raise PolymodalError(f"search_image takes one query image, got {len(images)}; for several queries use "
                                 "search(model.encode_image(images), k)")
        require_embedding(model)
        self.check_model(model)
        return self.search(model.encode_image(images), k)[0]


class ImageIndex(SearchByModel):
    """Open or create the index in folder `db`. Nothing is touched until a method runs. ``huge_pages``: for a process
    that searches on (a server), each set of vectors it loads is moved onto 2 MB pages in a background thread, so
    that later searches run faster (index/pages.py: 1.4-2.3x; the move costs about as much CPU as 100 searches)."""

    def __init__(self, db: str | Path, huge_pages: bool = False) -> None:
        if not isinstance(db, (str, os.PathLike)):  # ImageIndex(os.environ.get("DB")): not a bare TypeError
            raise PolymodalError(f"ImageIndex takes the index folder's path, got {type(db).__name__}; "
                                 "e.g. ImageIndex('pics.idx')")
        if not str(db).strip():  # Path("") is the current folder: `--db "$UNSET"` would index into the cwd
            raise PolymodalError("--db is empty; pass the index folder, e.g. --db pics.idx (ImageIndex('pics.idx') in "
                                 "Python)")
        self.db = Path(db).expanduser().resolve()
        self.sqlite_path = self.db / "meta.sqlite"
        self.faiss_path = self.db / "vectors.faiss"
        self.lock_path = self.db / "index.lock"
        self.vectors_lock_path = self.db / "vectors.lock"
        # one object, so the lock is re-entrant in the thread holding it (writing()); other threads, objects and
        # processes open their own descriptor and find it taken
        self._writer, self._writer_pid = FileLock(str(self.lock_path), timeout=0), os.getpid()
        self._cache: Snapshot | None = None  # the vectors of the last snapshot searched, for repeated searches
        self.huge_pages, self._advised = huge_pages, None  # the FAISS index last put on 2 MB pages

    def __repr__(self) -> str:
        return f"ImageIndex({str(self.db)!r})"

    def __getstate__(self) -> dict:  # a FileLock does not pickle: a copy (another process's) gets its own, unheld
        return {key: value for key, value in self.__dict__.items() if key not in ("_writer", "_writer_pid")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _writer=FileLock(str(state["lock_path"]), timeout=0), _writer_pid=os.getpid())

    def where(self) -> str:
        return f"index {self.db}"

    def _uid(self) -> str:
        with self._reading() as (_, meta):
            return meta["uid"]

    def exists(self) -> bool:
        if not self.sqlite_path.is_file():
            return False
        with _disk_errors(self.sqlite_path), closing(self._connect_reader()) as con:
            return self._meta(con) is not None

    # -- writing ---------------------------------------------------------------
    def update(self, folder: str | Path, model, progress: bool = True, batch_size: int = 32,
               commit_every_s: float | None = COMMIT_EVERY_S, scanned: tuple | None = None) -> UpdateReport:
        """Make the index match the images under `folder`: embed new and changed files, drop deleted ones.

        Only rows under `folder` are compared, so one index can hold several folders; hidden files under it, which
        the scan skips, stay as add() left them. Unreadable files are skipped and reported; ones that fail to decode
        are remembered: not read again until they change. Work is
        committed every `commit_every_s` seconds, so an error or interrupt keeps what was committed and a re-run
        does the rest (the exception's `index_progress` is (files done and saved, files to do)); None commits once,
        at the end: all or nothing.
        """
        if not isinstance(folder, (str, os.PathLike)):
            raise PolymodalError(f"update() takes one folder (a path), got {type(folder).__name__}; put the images "
                                 "in a folder and pass it (one index can hold several folders: update_folders() "
                                 "syncs several at once)")
        return self.update_folders([folder], model, progress, batch_size, commit_every_s,
                                   None if scanned is None else [scanned])

    def update_folders(self, folders: Sequence[str | Path], model, progress: bool = True, batch_size: int = 32,
                       commit_every_s: float | None = COMMIT_EVERY_S, scanned: Sequence[tuple] | None = None
                       ) -> UpdateReport:
        """update() of several folders in one sync: a photo moved from one of them to another keeps its vector,
        whichever folder comes first (synced one by one, the first could drop its row before the second met it, and
        it was decoded again). ``scanned``: scan_images() of each folder, made by the caller."""
        # a list first: a generator, used up by the check, synced nothing
        folders = list(folders) if isinstance(folders, Iterable) and not isinstance(folders, str) else [None]
        if not all(isinstance(f, (str, os.PathLike)) for f in folders):
            raise PolymodalError("update_folders() takes a list of folders (paths); update() takes one")
        batch_size = check_count(batch_size, "batch_size")
        _check_interval(commit_every_s)
        require_embedding(model)  # a VQA model (or None) is refused before any index file is made
        if self.exists():  # refuse a wrong model before a long scan
            self.check_model(model)
        # scanned: scan_images(folder) made by the caller (the CLI lists each folder before loading the model, to
        # refuse an empty one early): listing it again doubled the stat calls on a slow network share
        scans = list(scanned) if scanned is not None else [scan_images(f) for f in folders]
        files = list({f.path: f for found, _ in scans for f in found}.values())  # nested folders: each file once
        skipped = list(dict.fromkeys(s for _, why in scans for s in why))  # (nested folders: each skip once too)
        roots = [Path(f).expanduser().resolve() for f in folders]
        report = UpdateReport(skipped=list(skipped))
        unlisted = unlisted_folders(skipped)  # a folder that could not be listed: its rows stay, not "deleted"

        def under_roots(con, table):
            return {path: row for root in roots for path, row in _rows_under(con, root, table, unlisted).items()}

        return self._sync(model, files, report, under_roots, True, batch_size, progress, commit_every_s)

    def add(self, paths: Iterable[str | Path], model, progress: bool = True, batch_size: int = 32,
            commit_every_s: float | None = COMMIT_EVERY_S) -> UpdateReport:
        """Index these image files (one path or several, from any folders): new ones are embedded, ones changed
        since they were indexed are embedded again, unchanged ones are left; no other row is touched.

        Paths that are missing, not images or unreadable are skipped and reported (an error if all of them are).
        The index keeps paths, not pixels, so it can notice later changes: save in-memory images as files first.
        Commits as update() does.
        """
        batch_size = check_count(batch_size, "batch_size")
        _check_interval(commit_every_s)
        require_embedding(model)
        paths = _file_paths(paths, "add")
        files, skipped = [], []
        for p in dict.fromkeys(canonical_path(p) for p in paths):  # a path named twice is indexed once
            found = image_file(p)
            if isinstance(found, tuple):
                skipped.append(found)
            else:
                files.append(found)
        if not files:
            why = f": {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
            raise PolymodalError(f"no image to add{why}; pass paths of existing image files")
        if self.exists():
            self.check_model(model)
        report = UpdateReport(skipped=skipped)
        wanted = [f.path for f in files]
        return self._sync(model, files, report, lambda con, table: _rows_at(con, wanted, table), False, batch_size,
                          progress, commit_every_s)

    def _sync(self, model, files: list[ImageFile], report: UpdateReport, known_rows, drop_unseen: bool,
              batch_size: int, progress: bool, commit_every_s: float | None) -> UpdateReport:
        """Embed new and changed `files`; with drop_unseen, also drop the rows known_rows(con, table) returned that
        no file matched (files deleted from an updated folder). The drops go in the first commit."""
        done = _Done()
        try:
            with self._locked() as con:
                with _transaction(con):
                    meta = self._meta(con) or self._create(con, model)
                    self._check_model(meta, model)
                    con.execute(_FAILURES)
                    con.execute(_BY_CONTENT)
                    delta.make_tables(con)
                    _add_ctime(con)
                    known, failed = known_rows(con, "images"), known_rows(con, "failures")
                    drop, todo = _plan(con, files, known, failed, report)  # pops the rows it sees from both
                    if drop_unseen:
                        report.removed = len(known)  # rows under the folder whose file is gone
                        drop += [row.id for row in known.values()]
                        con.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in failed])
                    # the vectors of rows about to go, by content: a renamed or moved photo takes its old vector
                    reuse = dict(_select_in(con, "sha256, vector", "id", drop + [old for _, old, _ in todo if old]))
                    _delete_rows(con, drop, meta)
                    done.total = len(todo)
                    self._embed_all(con, meta, model, todo, report, batch_size, progress, commit_every_s, done, reuse)
                    # a changed file's old row left in _embed_batch even when its new one failed to embed
                    changed = bool(drop or report.added or any(old is not None for _, old, _ in todo))
                    _touch(con, meta, bump=changed)
                done.saved = done.total
                self._settle(con, meta)
        except BaseException as exc:
            exc.index_progress = (done.saved, done.total)  # for the CLI's "N of M were saved" line
            if done.total and hasattr(exc, "add_note"):  # (3.11+) a notebook's interrupted cell says it too
                saved = (f"{done.saved:,} of {done.total:,} images to embed were saved; the same update again "
                         "embeds the rest") if done.saved else (f"none of the {done.total:,} images to embed was saved "
                                                                "(no commit yet); the same update again embeds them")
                exc.add_note(f"index {self.db}: {saved}")
            raise
        log.info("index %s: %s", self.db, report.summary())
        return report

    def remove(self, paths: Iterable[str | Path]) -> int:
        """Drop these image paths (one path or several) from the index (files on disk are untouched); returns how
        many were there."""
        paths = _file_paths(paths, "remove")
        targets = list(dict.fromkeys(canonical_path(p) for p in paths))  # a path named twice is removed and counted once
        if not self.sqlite_path.is_file():
            raise self._missing()
        return len(self._drop(lambda con: list(_select_in(con, "id, path", "path", targets))))

    def remove_ids(self, ids: int | Iterable[int]) -> dict[int, str]:
        """Drop these row ids (one id or several: search hits' ids) from the index; -> {id: path} of the rows that
        were there. By id, not path: a stored path no longer names its row once a folder on it became a symlink."""
        ids = _row_ids(ids)
        if not self.sqlite_path.is_file():
            raise self._missing()
        ids = [i for i in dict.fromkeys(ids) if -2**63 <= i < 2**63]  # SQLite's integers
        return dict(self._drop(lambda con: list(_select_in(con, "id, path", "id", ids))))

    def prune(self) -> list[str]:
        """Drop the rows of files that no longer exist (`update` compares only the folders it is given, so the
        rows of a folder moved or deleted stay until this); -> their paths. A drive that is not mounted looks
        deleted too, and so does a symlinked file whose target is gone (as a folder update drops it). Remembered
        decode failures of vanished files are forgotten as well."""
        with self._reading() as (con, _):  # the slow part (a stat per row) outside the writer lock
            candidates = [p for (p,) in con.execute("SELECT path FROM images") if not os.path.exists(p)]

        def gone(con: sqlite3.Connection) -> list[tuple[int, str]]:
            # checked again under the lock: a file back (and maybe re-indexed) since the scan keeps its row
            rows = [r for r in _select_in(con, "id, path", "path", candidates) if not os.path.exists(r[1])]
            if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'failures'").fetchone():
                stale = [p for (p,) in con.execute("SELECT path FROM failures") if not os.path.exists(p)]
                con.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in stale])
            return rows

        return sorted(p for _, p in self._drop(gone))

    def _drop(self, pick: Callable[[sqlite3.Connection], list[tuple[int, str]]]) -> list[tuple[int, str]]:
        """Drop the rows pick(con) returns as (id, path), in one commit under the writer lock; -> those rows."""
        with self._locked() as con:
            with _transaction(con):
                meta = self._meta(con)
                if meta is None:
                    raise self._missing()
                rows = pick(con)
                if rows:
                    delta.make_tables(con)
                    _delete_rows(con, [i for i, _ in rows], meta)
                    _touch(con, meta, bump=True)
            if rows:
                self._settle(con, meta)
        return rows

    def _embed_all(self, con, meta: dict, model, todo, report: UpdateReport, batch_size: int,
                   progress: bool, commit_every_s: float | None, done: _Done, reuse: dict[str, bytes]) -> None:
        # Rows go into the open transaction batch by batch, so memory stays flat; it is committed (and a new one
        # begun) every commit_every_s seconds, and the caller commits the rest. Readers see only commits.
        last_commit = time.monotonic()
        with progress_bar(total=len(todo), desc="embedding", unit="img", disable=not progress or not todo) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                self._embed_batch(con, meta, model, batch, report, reuse)
                bar.update(len(batch))
                finished = start + len(batch)
                due = commit_every_s is not None and time.monotonic() - last_commit >= commit_every_s
                if due and finished < len(todo):  # the last batch goes in the caller's commit
                    _touch(con, meta, bump=True)
                    con.execute("COMMIT")
                    done.saved = finished
                    con.execute("BEGIN IMMEDIATE")
                    last_commit = time.monotonic()

    def _embed_batch(self, con, meta: dict, model, batch, report: UpdateReport, reuse: dict[str, bytes]) -> None:
        """Embed one batch into the open transaction: new rows in, the old rows of changed files out (in the same
        commit, whatever happens to the new one), files that fail to decode remembered. A file whose bytes the index
        holds (a copy; a photo renamed or its folder moved: `reuse`, the dropped rows) takes that vector, read and
        hashed but not decoded again."""
        # size/mtime come from the scan, taken before hashing: if the file changes meanwhile, the next update
        # sees a newer mtime and looks again.
        _delete_rows(con, [old for _, old, _ in batch if old is not None], meta)
        ready = []
        for f, old, digest in batch:
            try:
                ready.append((f, old, digest or file_sha256(f.path)))
            except OSError as exc:  # not remembered: permissions or a mount can come back without a new mtime
                report.skipped.append((f.path, f"cannot read ({exc.strerror})"))
        known = {d: reuse.get(d) or _vector_of(con, d) for _, _, d in ready}
        fresh = {d: f.path for f, _, d in reversed(ready) if known[d] is None}  # copies in the batch: decoded once
        embedded = dict(zip(fresh, _embed(model, list(fresh.values())))) if fresh else {}
        results = [embedded[d] if known[d] is None else np.frombuffer(known[d], "<f4") for _, _, d in ready]
        for (f, old, digest), result in zip(ready, results):
            if isinstance(result, str):
                report.skipped.append((f.path, result))
                if image_file(f.path) != f:  # gone or changed since the scan: not remembered, looked at again next time
                    continue
                con.execute("INSERT OR REPLACE INTO failures (path, size, mtime_ns, reason, failed, ctime_ns) VALUES "
                            "(?, ?, ?, ?, ?, ?)", (f.path, f.size, f.mtime_ns, result, _now(), f.ctime_ns))
                continue
            con.execute("DELETE FROM failures WHERE path = ?", (f.path,))  # it failed before and is fixed now
            con.execute(
                "INSERT INTO images (path, size, mtime_ns, sha256, vector, ctime_ns) VALUES (?, ?, ?, ?, ?, ?)",
                (f.path, f.size, f.mtime_ns, digest, result.astype("<f4").tobytes(), f.ctime_ns),
            )
            if old is not None:
                report.updated += 1
            else:
                report.added += 1

    # -- reading ---------------------------------------------------------------
    def search(self, query_vectors: Any, k: int = 10, model=None) -> list[Hits]:
        """Nearest images by cosine for each query row ([Q, D] or [D]); k is clamped to the number of images.
        ``model``: the model that made the queries, checked against the index's in the same snapshot (a server's
        index may be rebuilt with another model while it runs: IndexModelMismatch)."""
        k = check_count(k, "k")
        q = query_matrix(query_vectors)
        with self._reading_current() as (con, meta):
            if model is not None:
                self._check_model(meta, model)
            check_query_dim(q, meta, f"index {self.db}")
            snap, write_back = self._vectors(con, meta)
            k = min(k, snap.ntotal)
            if k == 0:
                return [Hits() for _ in q]
            scores, ids = snap.search(q, k)
            scores = np.clip(scores, -1.0, 1.0)  # cosines of unit vectors; float32 rounding gave a photo 1.0000001
            paths = _paths(con, ids[ids >= 0].tolist())
        if write_back:
            self._try_save(snap.single(), meta)
        # An id without a path can't happen within one snapshot; the filter is only a guard.
        return [
            Hits(Hit(paths[i], s, id=i) for s, i in zip(srow, irow) if i in paths)
            for srow, irow in zip(scores.tolist(), ids.tolist())
        ]

    def check_model(self, model) -> None:
        """Raise PolymodalError unless `model` embeds into this index's space."""
        with self._reading() as (_, meta):
            self._check_model(meta, model)

    def info(self) -> dict:
        """-> {"db", "count" (images), "model" (its key), "model_name", "model_version", "dim", "created",
        "updated" (UTC ISO times), "model_options" (only for a model loaded with options)}."""
        with self._reading() as (con, meta):
            count = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        return {
            "db": str(self.db),
            "count": count,
            "model": meta["model"],
            "model_name": meta["model_name"],
            "model_version": meta["model_version"],
            "dim": meta["dim"],
            "created": meta["created"],
            "updated": meta["updated"],
            **({"model_options": json.loads(meta["model_options"])} if "model_options" in meta else {}),
        }

    def __len__(self) -> int:
        return self.info()["count"]

    # -- SQLite ----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one update is exactly one transaction.
        return sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None)

    def _connect_reader(self) -> sqlite3.Connection:
        """A connection for reading. In a folder this process cannot write (a read-only mount, another user's index)
        a WAL database opens only read-only, and only if a writer's -shm file is there to share, or as immutable
        when none is (no writer has it open). On a full disk SQLite cannot make the -shm file that a WAL reader needs:
        there the index opens in exclusive locking mode, which keeps the -wal's index in the connection's own memory,
        so searches go on (committed work in the -wal included), and holds the file's lock while it reads, so a writer
        that found room meanwhile waits for the read (immutable=1 took no lock: a commit's checkpoint rewrote pages
        under the read, "database disk image is malformed")."""
        uri = self.sqlite_path.resolve().as_uri() + "?mode=ro"
        if os.access(self.db, os.W_OK):
            con = self._connect()
            try:
                con.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # opening is lazy: this is where it fails
                return con
            except sqlite3.OperationalError as exc:
                con.close()
                if _disk_error(exc, self.sqlite_path) is None:
                    raise
                log.info("%s: %s; reading the index without its -shm file", self.sqlite_path, exc)
                con = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None)
                # before the first read: SQLite then keeps the -wal index in this connection's memory, no -shm
                con.execute("PRAGMA locking_mode = EXCLUSIVE")
                return con
        con = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        try:
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # opening is lazy: this is where it fails
            return con
        except sqlite3.OperationalError:
            con.close()
        return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=30, isolation_level=None)

    @contextmanager
    def _reading(self) -> Iterator[tuple[sqlite3.Connection, dict]]:
        """A connection inside one read transaction: a consistent snapshot, even while a writer commits."""
        if not self.sqlite_path.is_file():  # checked first: connecting would create the file
            raise self._missing()
        with _disk_errors(self.sqlite_path), closing(self._connect_reader()) as con:  # (opening reads it first)
            con.execute("BEGIN")
            try:
                meta = self._meta(con)
                if meta is None:
                    raise self._missing()
                yield con, meta
            finally:
                if con.in_transaction:
                    con.execute("ROLLBACK")

    @contextmanager
    def _reading_current(self) -> Iterator[tuple[sqlite3.Connection, dict]]:
        """_reading(), begun again (twice at most) while this process's cache holds a later commit than the snapshot:
        a search begun just before a commit would load the file for the older state (1 GB at 1M photos) and put it in
        place of the newer cache."""
        for attempt in range(3):
            with self._reading() as (con, meta):
                cached = self._cache
                if (attempt < 2 and cached is not None and cached.state[0] == meta["uid"]
                        and cached.state[1] > meta["generation"]):
                    continue
                yield con, meta
                return

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The writer lock and a connection; the lock is held until the FAISS file is saved too."""
        if self.db.exists() and not self.db.is_dir():
            raise PolymodalError(f"--db {self.db} is a file; pass a folder to hold the index")
        self._check_not_foreign()
        if not self.db.exists():  # under a file, or in a read-only folder: one error, as `polymodal index` says it
            check_creatable(self.db, f"--db {self.db}")
        self.db.mkdir(parents=True, exist_ok=True)
        with self.writing(), closing(self._connect()) as con, _disk_errors(self.sqlite_path):
            # 16 KiB pages for a new index (no effect on an existing one): a row holds a 2 KiB vector (dim 512),
            # and 4 KiB pages fit one row each, half empty, so meta.sqlite took twice the vectors' size on disk
            con.execute("PRAGMA page_size = 16384")
            # WAL: readers keep searching the last committed state during a long update.
            con.execute("PRAGMA journal_mode=WAL")
            yield con

    @contextmanager
    def writing(self) -> Iterator[None]:
        """The writer lock, held by this thread across several calls (a check, then the update it decides, as the
        server's duplicate check before an upload): the updates inside take it again; any other writer gets IndexBusy
        meanwhile. The index folder must exist."""
        if self._writer_pid != os.getpid():  # made before a fork (a Pool or Celery worker): filelock refuses an
            # inherited lock object (RuntimeError), so this process makes its own
            self._writer, self._writer_pid = FileLock(str(self.lock_path), timeout=0), os.getpid()
        writer = self._writer
        try:
            writer.acquire()
        except Timeout:
            raise IndexBusy(
                f"index {self.db} is being written by another process or thread (lock file {self.lock_path}); "
                "wait for it to finish, then retry"
            ) from None
        except OSError as exc:  # a read-only mount, a colleague's index: it searches, but cannot take a writer
            raise PolymodalError(f"index {self.db} cannot be updated here: its lock file {self.lock_path} cannot be "
                                 f"written ({exc.strerror or exc}); searches work, updates need a folder you can "
                                 "write (copy the index folder to one)") from None
        try:
            yield
        finally:
            writer.release()

    def _check_not_foreign(self) -> None:
        """Refuse to start an index in a folder that holds other things (`--db` naming the photo folder itself would
        scatter the index files among the photos). Hidden files (.DS_Store) and the index's own names are fine."""
        other = self._foreign_files()
        if other:
            raise PolymodalError(f"--db {self.db} is a folder holding other files ({other[0]}, ...) and no index; pass "
                                 f"a new or empty folder for the index, e.g. --db {self.db.name}.idx "
                                 f"(ImageIndex('{self.db.name}.idx') in Python)")

    def discard_if_empty(self) -> bool:
        """Remove an index that holds no image (a first `index` run that could read none of its photos): left in
        place, it would tie the folder to that run's model. Returns whether it did; an index in use stays."""
        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return False
        try:
            with closing(self._connect_reader()) as con:
                if con.execute("SELECT COUNT(*) FROM images").fetchone()[0]:
                    return False
            for name in _OWN_NAMES - {"index.lock", "uploads"}:
                (self.db / name).unlink(missing_ok=True)
        finally:
            lock.release()
        self.lock_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.db.rmdir()  # only when nothing else is in it
        return True

    def _foreign_files(self) -> list[str]:
        """What a --db folder without an index holds besides the index's own names and hidden files, sorted."""
        if not self.db.is_dir() or self.sqlite_path.exists():
            return []
        return sorted(p.name for p in self.db.iterdir() if p.name not in _OWN_NAMES and not p.name.startswith("."))

    def _meta(self, con: sqlite3.Connection) -> dict | None:
        try:
            if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
                return None  # an empty file, e.g. left by a first update that crashed
            meta = dict(con.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:  # a full disk is not a damaged index: no "use a new --db" for it
            raise _disk_error(exc, self.sqlite_path) or _damaged(exc, self.sqlite_path) or PolymodalError(
                f"{self.sqlite_path} is not a readable index ({exc}); use a new --db (an ImageIndex of a new folder in "
                "Python)") from exc
        if meta.get("schema") != SCHEMA_VERSION:
            raise PolymodalError(
                f"index {self.db} has format {meta.get('schema')}, this polymodal reads format {SCHEMA_VERSION}; "
                "build a new one with a new --db (an ImageIndex of a new folder in Python)"
            )
        meta["dim"] = int(meta["dim"])
        meta["generation"] = int(meta["generation"])
        return meta

    def _create(self, con: sqlite3.Connection, model) -> dict:
        if not isinstance(model.dim, int) or model.dim < 1:
            raise PolymodalError(f"model {model.key} has dim {model.dim!r}; it needs a positive vector size")
        for statement in _SCHEMA:  # not executescript: that would COMMIT our transaction
            con.execute(statement)
        now = _now()
        meta = {
            "schema": SCHEMA_VERSION,
            "uid": uuid.uuid4().hex,  # tells a rebuilt index apart from the old one at the same path
            "model": model.key,
            "model_name": getattr(model, "source", None) or model.name,  # what `search --db` loads: a path if loaded from one
            "model_version": model.version,
            "dim": model.dim,
            "created": now,
            "updated": now,
            "generation": 0,
        }
        options = getattr(model, "load_options", None)  # polymodal.load(FILE, tokenizer=DIR): DIR is needed again
        if options:
            meta["model_options"] = json.dumps(options, sort_keys=True)
        con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
        return self._meta(con)

    def _check_model(self, meta: dict, model) -> None:
        if meta["model"] != model.key or meta["dim"] != model.dim:
            raise IndexModelMismatch(
                f"index {self.db} was built with model {meta['model']} (dim {meta['dim']}), not {model.key} "
                f"(dim {model.dim}); " + mismatch_fix(meta, model, "with this index", f"a new --db for {model.name}",
                                                      "index its photos again into a new --db",
                                                      "an ImageIndex of a new folder")
            )

    def _missing(self) -> PolymodalError:
        if self.lock_path.is_file():
            try:
                with FileLock(str(self.lock_path), timeout=0):
                    pass
            except Timeout:  # a first `polymodal index` is still running: the index is coming, not absent
                return PolymodalError(f"index {self.db} is being built by another process and holds no images yet; "
                                      "search again when it finishes")
        other = self._foreign_files()
        if other:  # the photo folder itself given as --db: index it into a folder of its own
            return PolymodalError(f"no index at {self.db}: it is a folder of other files ({other[0]}, "
                                  f"...); build an index of it with `polymodal index {self.db} --db "
                                  f"{self.db.name}.idx` (ImageIndex('{self.db.name}.idx').update(FOLDER, model) in "
                                  "Python), then search that")
        if self.db.is_file():  # an index is a folder: `polymodal index DIR --db THAT_FILE` cannot make one there
            return PolymodalError(f"no index at {self.db}: it is a file; an index is a folder, made with "
                                  f"`polymodal index DIR --db {self.db.name}.idx` (any new folder name; "
                                  f"ImageIndex('{self.db.name}.idx').update(DIR, model) in Python)")
        return PolymodalError(f"no index at {self.db}; build one with `polymodal index DIR --db {self.db}` "
                              "(index.update(DIR, model) in Python)")

    # -- FAISS -----------------------------------------------------------------
    def _vectors(self, con: sqlite3.Connection, meta: dict) -> tuple[Snapshot, bool]:
        """The vectors of this snapshot (cached across searches; a cache of an earlier generation is caught up from
        SQLite, not read again) and whether vectors.faiss should be written back (rebuilt, or far behind)."""
        state, cached = self._state(con, meta), self._cache
        if cached is not None and cached.state == state:
            return cached, False
        snap, stale = None, False
        if (cached is not None and cached.state[::2] == state[::2] and cached.state[1] < state[1]
                and delta.commit_token(con, cached.state[1]) == cached.state[3]):  # its generation is in this history
            snap = cached.caught_up(con, state, meta["dim"])
        if snap is None:
            snap, current = self._load_vectors(con, meta, state)
            stale = not current
        self._keep(snap)
        return snap, stale

    def _keep(self, snap: Snapshot) -> None:
        """Cache `snap`; with huge_pages, a FAISS index it is the first to hold goes onto 2 MB pages meanwhile (the
        thread keeps the index alive; searches read it as it moves; it stops once a newer one is kept: a removal's
        copy). A cache's index is never changed in place."""
        self._cache = snap
        if self.huge_pages and snap.index is not self._advised:
            self._advised = index = snap.index
            threading.Thread(target=advise_huge_pages, args=(index, lambda: self._advised is index),
                             name="polymodal-huge-pages", daemon=True).start()

    def _state(self, con: sqlite3.Connection, meta: dict) -> tuple:
        # meta.sqlite's identity and the generation's token too: an index folder swapped for a copy that was written on
        # separately (a backup put back, then updated) has the same uid and may reuse ids for other photos, so its
        # generations are not this cache's future
        where = os.stat(self.sqlite_path)
        return (meta["uid"], meta["generation"], (where.st_dev, where.st_ino),
                delta.commit_token(con, meta["generation"]))

    def _load_vectors(self, con: sqlite3.Connection, meta: dict, state: tuple | None = None) -> tuple[Snapshot, bool]:
        """The vectors of this snapshot: the file brought up to date, else rebuilt from the BLOBs.
        -> (them, whether the file was near enough to leave as it is)"""
        dim, state = meta["dim"], state or self._state(con, meta)
        if self.faiss_path.is_file():
            try:
                # read by Python: faiss.read_index takes no path that is not UTF-8 (a TypeError from SWIG); streamed,
                # not np.fromfile + deserialize_index, which held the vectors three times over while opening
                with open(self.faiss_path, "rb") as f:
                    index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
                if index.d == dim:
                    ids = faiss.vector_to_array(index.id_map)
                    found = forward(con, state, dim, index, int(ids.max()) if len(ids) else 0, None, shared=False)
                    if found is not None:
                        return found[0], delta.small(found[1], len(ids))
                log.info("%s does not match %s; rebuilding it", self.faiss_path, self.sqlite_path)
            except (RuntimeError, AttributeError, OSError) as exc:  # unreadable or not an IndexIDMap
                log.warning("cannot read %s (%s); rebuilding it", self.faiss_path, exc)
        elif meta["generation"] > 0:
            log.info("%s is missing; rebuilding it from %s", self.faiss_path, self.sqlite_path)
        return Snapshot(state, rebuild(con, dim), delta.top_id(con)), False

    def _settle(self, con: sqlite3.Connection, meta: dict) -> None:
        """After a writer's commit: bring this process's cache up to it (a server searches on at once), and write
        vectors.faiss when it is missing or the delta it lacks has passed delta.MERGE_FRACTION of the rows."""
        rows = delta.row_count(con)
        behind = delta.pending(con, meta)
        merge = behind is None or not delta.small(behind, rows) or not self.faiss_path.is_file()
        if self._cache is None:
            if not merge:
                return
            # no search holds what this loads yet, so the rows beside the file go into it in place, not into a copy
            snap = self._load_vectors(con, meta)[0]
            index = snap.single(copy=False)
        else:
            snap = self._vectors(con, meta)[0]
            if not merge:
                return
            index = snap.single()
        self._keep(Snapshot(snap.state, index, snap.top))  # before the write, which may wait for a write-back
        if not self._save_vectors(index):
            return
        try:
            with _transaction(con):
                delta.merged(con, snap.top, snap.state[1])
        except sqlite3.Error as exc:  # a disk full since the write: the update is committed; the next merge comes early
            log.warning("could not record the write of %s (%s); the next update writes it again", self.faiss_path, exc)

    def _save_vectors(self, index) -> bool:
        """A writer's save, after its commit, under vectors.lock: it waits for a reader's write-back in progress, so
        that an older rebuild can't land after it. A failure here costs only a replay or rebuild on the next open, so
        warn instead of failing. -> whether it wrote."""
        try:
            with FileLock(str(self.vectors_lock_path), timeout=SAVE_WAIT_S):
                self._write_vectors(index)
            return True
        except (Timeout, OSError) as exc:
            log.warning("could not write %s (%s); searches take what it lacks from %s", self.faiss_path, exc,
                        self.sqlite_path.name)
            return False

    def _write_vectors(self, index) -> None:
        # always under vectors.lock, so any temporary file of ours is a leftover of a save that was killed (kill -9,
        # power loss): each was up to the size of the vectors, hidden, and never removed
        for tmp in self.db.glob(f".{self.faiss_path.name}.*.tmp"):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # another user's, in a shared sticky folder: theirs to remove, no reason to fail a save
                log.debug("could not remove %s", tmp)
        # streamed into the file: serialize_index held two more copies of the vectors in memory while saving
        atomic_write_with(self.faiss_path, lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))
        # mkstemp makes 0600 files; give it meta.sqlite's mode so the same users can read both
        os.chmod(self.faiss_path, stat.S_IMODE(self.sqlite_path.stat().st_mode))

    def _try_save(self, index, meta: dict) -> None:
        """A reader that rebuilt the cache (or found the file far behind) writes it back, unless a commit came since
        its snapshot or another save is in progress. It takes vectors.lock, never the writer lock, so it never makes a
        writer fail: a writer that commits meanwhile waits for this save, then writes its own file over it."""
        try:
            with FileLock(str(self.vectors_lock_path), timeout=0):
                with closing(self._connect()) as con:
                    now = self._meta(con)
                if now is not None and (now["uid"], now["generation"]) == (meta["uid"], meta["generation"]):
                    self._write_vectors(index)
        except (Timeout, OSError) as exc:  # busy, or a read-only folder: searching still works
            log.debug("not writing %s: %s", self.faiss_path, exc)


# -- helpers on an open connection ------------------------------------------------
def _disk_error(exc: sqlite3.Error, path: Path) -> OSError | None:
    """SQLite's "database or disk is full" (SQLITE_FULL) and "disk I/O error" (SQLITE_IOERR: also what a -shm file
    that cannot grow on a full disk gives) as the OSError they are, naming the file: the CLI says it in one line (no
    traceback), the server answers 507. None for any other error."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; before it, SQLite's fixed messages
    primary = code & 0xFF if code is not None else None
    if primary == 13 or "database or disk is full" in str(exc):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if primary == 10 or "disk I/O error" in str(exc):
        if nearly_full(path.parent):  # SQLite's "I/O error" for a -shm it could not grow
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return OSError(errno.EIO, "disk I/O error", str(path))
    return None


def _damaged(exc: sqlite3.Error, path: Path) -> IndexDamaged | None:
    """A damaged file (SQLITE_CORRUPT, SQLITE_NOTADB) as IndexDamaged: one line from the CLI, a 503 from the server
    (each was a traceback: a 500 per request). None for any other error."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; before it, SQLite's fixed messages
    if (code or 0) & 0xFF in (11, 26) or any(text in str(exc) for text in ("file is not a database", "malformed")):
        return IndexDamaged(f"index {path.parent} is damaged ({path.name}: {exc}); restore the index folder from a "
                            "backup, or index the photos again into a new folder: polymodal index PHOTOS --db NEW_DB "
                            "(ImageIndex(NEW_DB).update(PHOTOS, model) in Python)")
    return None


@contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """_disk_error() and _damaged() applied to what SQLite raises inside the block."""
    try:
        yield
    except sqlite3.DatabaseError as exc:  # (OperationalError's base: "file is not a database" is not one)
        raise _disk_error(exc, path) or _damaged(exc, path) or exc from exc


@contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; any exception (or a kill) leaves the database as it was."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if con.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _add_ctime(con: sqlite3.Connection) -> None:
    for table in ("images", "failures"):
        if _CTIME not in [r[1] for r in con.execute(f"PRAGMA table_info({table})")]:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {_CTIME} INTEGER")


def _same_stat(stored, f: ImageFile) -> bool:
    """The file's size, mtime and ctime are the stored ones. A replacement of the same size whose mtime was put back
    (cp -p, rsync -a, tar -x, touch -r, exiftool -P) has a new ctime; a stored NULL (a row from before ctimes were
    kept) is compared on size and mtime alone."""
    return (stored.size, stored.mtime_ns) == (f.size, f.mtime_ns) and stored.ctime_ns in (None, f.ctime_ns)


def _plan(con: sqlite3.Connection, files: list[ImageFile], known: dict[str, _Row], failed: dict[str, _Failure],
          report: UpdateReport) -> tuple[list[int], list[tuple[ImageFile, int | None, str | None]]]:
    """Compare files with their stored rows and failures (popped from `known` and `failed`): -> row ids to drop now
    and files to embed as (file, id of its old row or None, sha256 if already computed). Unchanged files count in
    the report, unchanged files that failed before are skipped unread; a file whose size is the same but whose mtime or
    ctime is not is hashed: the same bytes (touched, chmod-ed, copied over itself) only get the new times."""
    drop: list[int] = []
    todo: list[tuple[ImageFile, int | None, str | None]] = []
    for f in files:
        row, failure = known.pop(f.path, None), failed.pop(f.path, None)
        if row is None:
            if failure is not None and _same_stat(failure, f):
                if failure.ctime_ns is None:
                    con.execute("UPDATE failures SET ctime_ns = ? WHERE path = ?", (f.ctime_ns, f.path))
                report.skipped.append((f.path, f"{failure.reason}; unchanged since it failed on {failure.failed[:10]}, "
                                               "so not read again"))
            else:
                todo.append((f, None, None))
        elif _same_stat(row, f):
            if row.ctime_ns is None:
                con.execute("UPDATE images SET ctime_ns = ? WHERE id = ?", (f.ctime_ns, row.id))
            report.unchanged += 1
        elif row.size != f.size:
            todo.append((f, row.id, None))
        else:
            try:
                digest = file_sha256(f.path)
            except OSError as exc:
                report.skipped.append((f.path, f"cannot read ({exc.strerror})"))
                drop.append(row.id)  # don't keep a vector for content we can't see
                continue
            if digest == row.sha256:  # touched, copied or chmod-ed, same bytes: remember the new times only
                con.execute("UPDATE images SET mtime_ns = ?, ctime_ns = ? WHERE id = ?", (f.mtime_ns, f.ctime_ns, row.id))
                report.unchanged += 1
            else:
                todo.append((f, row.id, digest))
    return drop, todo


def _rows_at(con: sqlite3.Connection, paths: list[str], table: str = "images") -> dict[str, tuple]:
    columns, row = _COLUMNS[table]
    return {path: row(*rest) for path, *rest in _select_in(con, f"path, {columns}", "path", paths, table)}


def _select_in(con: sqlite3.Connection, columns: str, key: str, values: list, table: str = "images") -> Iterator[tuple]:
    """SELECT columns FROM table WHERE key IN values, in chunks under SQLite's bound-parameter limit."""
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        yield from con.execute(f"SELECT {columns} FROM {table} WHERE {key} IN ({','.join('?' * len(chunk))})", chunk)


def _rows_under(con: sqlite3.Connection, root: Path, table: str = "images",
                except_under: Sequence[str] = ()) -> dict[str, tuple]:
    prefix = str(root) if str(root).endswith(os.sep) else str(root) + os.sep
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # every path starting with prefix sorts in [prefix, upper)
    columns, row = _COLUMNS[table]
    rows = con.execute(f"SELECT path, {columns} FROM {table} WHERE path >= ? AND path < ?", (prefix, upper))
    skip = tuple(p.rstrip(os.sep) + os.sep for p in except_under)
    # a hidden file or folder under root (".x.jpg", ".thumbs/") is never in the scan: its rows came from add() (a
    # file named by itself) and are left alone, not taken for deleted files and dropped by every sync of the folder
    return {path: row(*rest) for path, *rest in rows if not (skip and path.startswith(skip))
            and not any(part.startswith(".") for part in path[len(prefix):].split(os.sep))}


def _delete_rows(con: sqlite3.Connection, ids: Sequence[int], meta: dict) -> None:
    """Delete rows in the open transaction, and record their ids for readers of an older vectors.faiss: they leave in
    the next commit, whose generation is one above meta's."""
    con.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in ids])
    delta.record_removed(con, ids, meta["generation"] + 1)


def _touch(con: sqlite3.Connection, meta: dict, bump: bool) -> None:
    """Record the update time; bump the generation (in `meta` too) when vectors changed, with a new token for it
    (delta.make_tables has run in this transaction)."""
    meta["generation"] += int(bump)
    con.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [("generation", str(meta["generation"])), ("updated", _now())],
    )
    if bump:
        delta.record_commit(con, meta["generation"])


@dataclass
class _Done:
    """How far an update got: files embedded (or failed) and committed, of `total` to embed."""

    saved: int = 0
    total: int = 0


def _check_interval(commit_every_s) -> None:
    # numbers.Real takes numpy scalars too; a bool is a mistake, not a 1-second interval
    if commit_every_s is not None and (not isinstance(commit_every_s, numbers.Real) or isinstance(commit_every_s, bool)
                                       or not commit_every_s >= 0):
        raise PolymodalError(f"commit_every_s must be a number of seconds >= 0 (or None: commit once, at the end), "
                             f"got {commit_every_s!r}")


def _vector_of(con: sqlite3.Connection, sha256: str) -> bytes | None:
    """The stored vector of a row with these bytes (images_sha256 finds it), or None."""
    row = con.execute("SELECT vector FROM images WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone()
    return row and row[0]


def _paths(con: sqlite3.Connection, ids: list[int]) -> dict[int, str]:
    return dict(_select_in(con, "id, path", "id", sorted(set(ids))))


def _embed(model, paths: list[str]) -> list[np.ndarray | str]:
    """A vector per path, or the reason that file can't be read. A failing batch is retried one by one."""
    try:
        vectors = model.encode_image(paths, batch_size=len(paths))
    except PolymodalError as exc:
        if len(paths) == 1:
            return [str(exc)]
        return [_embed(model, [p])[0] for p in paths]
    if vectors.shape != (len(paths), model.dim):
        raise PolymodalError(
            f"model {model.key} returned vectors of shape {vectors.shape}, expected ({len(paths)}, {model.dim})"
        )
    return list(vectors)


def query_matrix(query_vectors: Any) -> np.ndarray:
    """Query vectors ([D] or [Q, D]) as a C-contiguous float32 [Q, D] of unit rows, or one clear error."""
    try:
        q = np.asarray(query_vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise PolymodalError(f"query vectors must be an array of numbers, [D] or [Q, D] (e.g. model.encode_text"
                             f"(...)), got {type(query_vectors).__name__}") from None
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2:
        raise PolymodalError(f"query vectors must be [D] or [Q, D], got shape {q.shape}")
    if not np.isfinite(q).all():  # NaN scores match nothing: a search would return no hits, silently
        bad = sorted({int(r) for r in np.nonzero(~np.isfinite(q))[0]})
        raise PolymodalError(f"query vector row(s) {bad[:5]} hold NaN or infinite values; embed the query again")
    # Normalising makes inner product = cosine even for raw vectors; model outputs are unchanged by it.
    return np.ascontiguousarray(q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12))


def mismatch_fix(meta: dict, model, with_it: str, elsewhere: str, rebuild: str, python: str) -> str:
    """What to do when `model` does not match the index's (or collection's) recorded model: load that one, or, when
    `model` is that one already (its key changed since: a polymodal upgrade, edited weights or preprocessing
    settings), rebuild: --model would only load it again. ``python``: the other place as Python names it (the
    mismatch is met from Python too: ImageIndex.update, check_model)."""
    if meta.get("model_name") == (getattr(model, "source", None) or model.name):
        return (f"{meta['model_name']} has changed since these vectors were made (another polymodal version, or its "
                f"weights or preprocessing settings edited), and no --model loads the old one; {rebuild} ({python} "
                "in Python)")
    return (f"use --model {meta['model_name']} {with_it}, or {elsewhere} (in Python: "
            f"polymodal.load({meta['model_name']!r}), or {python})")


def check_query_dim(q: np.ndarray, meta: dict, where: str) -> None:
    """Refuse queries from another space: `meta` is the index's (or collection's) model key and dim."""
    if q.shape[1] != meta["dim"]:
        raise PolymodalError(f"query vectors have dimension {q.shape[1]} but {where} holds dimension {meta['dim']} "
                             f"({meta['model']}); embed queries with {meta['model']}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
