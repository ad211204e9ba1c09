"""A persistent, incrementally updated image index in one folder.

Layout of the folder (the CLI's --db):
  meta.sqlite    the source of truth: one row per image (path, size, mtime, sha256, float32 vector BLOB) and
                 index-level meta (model, dim, times, generation)
  vectors.faiss  a derived cache for fast search: IndexIDMap2(IndexFlatIP), ids = SQLite row ids
  index.lock     held by the one process allowed to write

Crash safety: an update is one SQLite transaction, committed only at the end, and vectors.faiss is replaced
atomically after the commit. A row's vector never changes (a changed file gets a new row) and ids are never
reused (AUTOINCREMENT), so vectors.faiss is valid exactly when its id set equals the table's; if not (crash
between commit and write, file deleted), it is rebuilt from the BLOBs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import uuid
from collections import namedtuple
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import faiss
import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

from polymodal.cache import atomic_write_bytes
from polymodal.errors import PolymodalError
from polymodal.index.scan import ImageFile, canonical_path, file_sha256, image_file, scan_images
from polymodal.models.inputs import check_count

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE,"
    " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, vector BLOB NOT NULL)",
)
_Row = namedtuple("_Row", "id size mtime_ns sha256")


class IndexBusy(PolymodalError):
    """Another process holds the index's writer lock: a passing condition, worth retrying."""


@dataclass
class Hit:
    path: str
    score: float  # cosine similarity


@dataclass
class UpdateReport:
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


class ImageIndex:
    """Open or create the index in folder `db`. Nothing is touched until a method runs."""

    def __init__(self, db: str | Path) -> None:
        self.db = Path(db).expanduser().resolve()
        self.sqlite_path = self.db / "meta.sqlite"
        self.faiss_path = self.db / "vectors.faiss"
        self.lock_path = self.db / "index.lock"
        self._cache: tuple[tuple, Any] | None = None  # ((uid, generation), faiss index) for repeated searches

    def __repr__(self) -> str:
        return f"ImageIndex({str(self.db)!r})"

    def exists(self) -> bool:
        if not self.sqlite_path.is_file():
            return False
        with closing(self._connect()) as con:
            return self._meta(con) is not None

    # -- writing ---------------------------------------------------------------
    def update(self, folder: str | Path, model, progress: bool = True, batch_size: int = 32) -> UpdateReport:
        """Make the index match the images under `folder`: embed new and changed files, drop deleted ones.

        Only rows under `folder` are compared, so one index can hold several folders. Unreadable files are
        skipped and reported; any other error leaves the index as it was before the call.
        """
        from polymodal.registry import require_embedding

        batch_size = check_count(batch_size, "batch_size")
        require_embedding(model)  # a VQA model (or None) is refused before any index file is made
        if not isinstance(folder, (str, os.PathLike)):
            raise PolymodalError(f"update() takes one folder (a path), got {type(folder).__name__}; put the images "
                                 "in a folder and pass it (one index can hold several folders)")
        if self.exists():  # refuse a wrong model before a long scan
            self.check_model(model)
        files, skipped = scan_images(folder)
        root = Path(folder).expanduser().resolve()
        report = UpdateReport(skipped=list(skipped))
        return self._sync(model, files, report, lambda con: _rows_under(con, root), True, batch_size, progress)

    def add(self, paths: Iterable[str | Path], model, progress: bool = True, batch_size: int = 32) -> UpdateReport:
        """Index these image files (one path or several, from any folders): new ones are embedded, ones changed
        since they were indexed are embedded again, unchanged ones are left; no other row is touched.

        Paths that are missing, not images or unreadable are skipped and reported (an error if all of them are).
        The index keeps paths, not pixels, so it can notice later changes: save in-memory images as files first.
        """
        from polymodal.registry import require_embedding

        batch_size = check_count(batch_size, "batch_size")
        require_embedding(model)
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        if not isinstance(paths, Iterable) or isinstance(paths, (bytes, np.ndarray)):
            raise PolymodalError(f"add() takes image file paths, got {type(paths).__name__}; the index keeps paths "
                                 "so it can notice later changes: save in-memory images as files and pass those")
        paths = list(paths)
        for p in paths:
            if not isinstance(p, (str, os.PathLike)):
                raise PolymodalError(f"add() takes image file paths, got a {type(p).__name__}; save in-memory "
                                     "images as files and pass their paths")
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
        return self._sync(model, files, report, lambda con: _rows_at(con, wanted), False, batch_size, progress)

    def _sync(self, model, files: list[ImageFile], report: UpdateReport, known_rows, drop_unseen: bool,
              batch_size: int, progress: bool) -> UpdateReport:
        """One transaction: embed new and changed `files`; with drop_unseen, also drop the rows known_rows(con)
        returned that no file matched (files deleted from an updated folder)."""
        with self._locked() as con:
            with _transaction(con):
                meta = self._meta(con) or self._create(con, model)
                self._check_model(meta, model)
                index, from_file = self._load_vectors(con, meta)
                known = known_rows(con)
                drop, todo = _plan(con, files, known, report)  # pops the rows it sees from `known`
                if drop_unseen:
                    report.removed = len(known)  # rows under the folder whose file is gone
                    drop += [row.id for row in known.values()]
                _delete(con, index, drop)
                self._embed_all(con, index, model, todo, report, batch_size, progress)
                changed = bool(drop or report.added or report.updated)
                state = _touch(con, meta, bump=changed)
            if changed or not from_file:
                self._save_vectors(index)
            self._cache = (state, index)
        log.info("index %s: %s", self.db, report.summary())
        return report

    def remove(self, paths: Iterable[str | Path]) -> int:
        """Drop these image paths (one path or several) from the index (files on disk are untouched); returns how
        many were there."""
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        targets = list(dict.fromkeys(canonical_path(p) for p in paths))  # a path named twice is removed and counted once
        if not self.sqlite_path.is_file():
            raise self._missing()
        with self._locked() as con:
            with _transaction(con):
                meta = self._meta(con)
                if meta is None:
                    raise self._missing()
                index, from_file = self._load_vectors(con, meta)
                ids = [r[0] for p in targets for r in con.execute("SELECT id FROM images WHERE path = ?", (p,))]
                _delete(con, index, ids)
                state = _touch(con, meta, bump=bool(ids))
            if ids or not from_file:
                self._save_vectors(index)
            self._cache = (state, index)
        return len(ids)

    def _embed_all(self, con, index, model, todo, report: UpdateReport, batch_size: int, progress: bool) -> None:
        # Rows go into the open transaction batch by batch, so memory stays flat; nothing is visible until commit.
        # size/mtime come from the scan, taken before hashing: if the file changes meanwhile, the next update
        # sees a newer mtime and looks again.
        with tqdm(total=len(todo), desc="embedding", unit="img", disable=not progress or not todo) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                ready = []
                for f, is_update, digest in batch:
                    try:
                        ready.append((f, is_update, digest or file_sha256(f.path)))
                    except OSError as exc:
                        report.skipped.append((f.path, f"cannot read ({exc.strerror})"))
                results = _embed(model, [f.path for f, _, _ in ready]) if ready else []
                ids, vectors = [], []
                for (f, is_update, digest), result in zip(ready, results):
                    if isinstance(result, str):
                        report.skipped.append((f.path, result))
                        continue
                    cur = con.execute(
                        "INSERT INTO images (path, size, mtime_ns, sha256, vector) VALUES (?, ?, ?, ?, ?)",
                        (f.path, f.size, f.mtime_ns, digest, result.astype("<f4").tobytes()),
                    )
                    ids.append(cur.lastrowid)
                    vectors.append(result)
                    if is_update:
                        report.updated += 1
                    else:
                        report.added += 1
                if ids:
                    index.add_with_ids(np.stack(vectors).astype(np.float32), np.asarray(ids, dtype=np.int64))
                bar.update(len(batch))

    # -- reading ---------------------------------------------------------------
    def search(self, query_vectors: Any, k: int = 10) -> list[list[Hit]]:
        """Nearest images by cosine for each query row ([Q, D] or [D]); k is clamped to the number of images."""
        k = check_count(k, "k")
        try:
            q = np.asarray(query_vectors, dtype=np.float32)
        except (TypeError, ValueError):
            raise PolymodalError(f"query vectors must be an array of numbers, [D] or [Q, D] (e.g. model.encode_text"
                                 f"(...)), got {type(query_vectors).__name__}") from None
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2:
            raise PolymodalError(f"query vectors must be [D] or [Q, D], got shape {q.shape}")
        if not np.isfinite(q).all():  # NaN scores match nothing: FAISS would return no hits, silently
            bad = sorted({int(r) for r in np.nonzero(~np.isfinite(q))[0]})
            raise PolymodalError(f"query vector row(s) {bad[:5]} hold NaN or infinite values; embed the query again")
        # Normalising makes inner product = cosine even for raw vectors; model outputs are unchanged by it.
        q = np.ascontiguousarray(q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12))
        with self._reading() as (con, meta):
            if q.shape[1] != meta["dim"]:
                raise PolymodalError(
                    f"query vectors have dimension {q.shape[1]} but index {self.db} holds dimension "
                    f"{meta['dim']} ({meta['model']}); embed queries with {meta['model']}"
                )
            index, rebuilt = self._vectors(con, meta)
            k = min(k, index.ntotal)
            if k == 0:
                return [[] for _ in q]
            scores, ids = index.search(q, k)
            paths = _paths(con, ids[ids >= 0].tolist())
        if rebuilt:
            self._try_save(index, meta)
        # An id without a path can't happen within one snapshot; the filter is only a guard.
        return [
            [Hit(paths[i], s) for s, i in zip(srow, irow) if i in paths]
            for srow, irow in zip(scores.tolist(), ids.tolist())
        ]

    def search_text(self, model, text: str, k: int = 10) -> list[Hit]:
        """One query string; for several, search(model.encode_text(queries), k) returns one hit list per query."""
        if not isinstance(text, str):
            raise PolymodalError(f"search_text takes one query string, got {type(text).__name__}; for several "
                                 "queries use search(model.encode_text(queries), k)")
        self.check_model(model)
        return self.search(model.encode_text([text]), k)[0]

    def search_image(self, model, image: Any, k: int = 10) -> list[Hit]:
        """`image`: a path, PIL image or numpy array."""
        self.check_model(model)
        return self.search(model.encode_image([image]), k)[0]

    def check_model(self, model) -> None:
        """Raise PolymodalError unless `model` embeds into this index's space."""
        with self._reading() as (_, meta):
            self._check_model(meta, model)

    def info(self) -> dict:
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
        }

    def __len__(self) -> int:
        return self.info()["count"]

    # -- SQLite ----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one update is exactly one transaction.
        return sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None)

    @contextmanager
    def _reading(self) -> Iterator[tuple[sqlite3.Connection, dict]]:
        """A connection inside one read transaction: a consistent snapshot, even while a writer commits."""
        if not self.sqlite_path.is_file():  # checked first: connecting would create the file
            raise self._missing()
        with closing(self._connect()) as con:
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
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The writer lock and a connection; the lock is held until the FAISS file is saved too."""
        if self.db.exists() and not self.db.is_dir():
            raise PolymodalError(f"--db {self.db} is a file; pass a folder to hold the index")
        self.db.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise IndexBusy(
                f"index {self.db} is being written by another process (lock file {self.lock_path}); "
                "wait for it to finish, then retry"
            ) from None
        try:
            with closing(self._connect()) as con:
                # WAL: readers keep searching the last committed state during a long update.
                con.execute("PRAGMA journal_mode=WAL")
                yield con
        finally:
            lock.release()

    def _meta(self, con: sqlite3.Connection) -> dict | None:
        try:
            if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
                return None  # an empty file, e.g. left by a first update that crashed
            meta = dict(con.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:
            raise PolymodalError(f"{self.sqlite_path} is not a readable index ({exc}); use a new --db") from exc
        if meta.get("schema") != SCHEMA_VERSION:
            raise PolymodalError(
                f"index {self.db} has format {meta.get('schema')}, this polymodal reads format {SCHEMA_VERSION}; "
                "build a new one with a new --db"
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
        con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
        return self._meta(con)

    def _check_model(self, meta: dict, model) -> None:
        if meta["model"] != model.key or meta["dim"] != model.dim:
            raise PolymodalError(
                f"index {self.db} was built with model {meta['model']} (dim {meta['dim']}), not {model.key} "
                f"(dim {model.dim}); use --model {meta['model_name']} with this index, or a new --db for {model.name}"
            )

    def _missing(self) -> PolymodalError:
        if self.lock_path.is_file():
            try:
                with FileLock(str(self.lock_path), timeout=0):
                    pass
            except Timeout:  # a first `polymodal index` is still running: the index is coming, not absent
                return PolymodalError(f"index {self.db} is being built by another process and holds no images yet; "
                                      "search again when it finishes")
        return PolymodalError(f"no index at {self.db}; build one with `polymodal index DIR --db {self.db}`")

    # -- FAISS -----------------------------------------------------------------
    def _vectors(self, con: sqlite3.Connection, meta: dict) -> tuple[Any, bool]:
        """The FAISS index for this snapshot (cached across searches) and whether it had to be rebuilt."""
        state = (meta["uid"], meta["generation"])
        if self._cache is not None and self._cache[0] == state:
            return self._cache[1], False
        index, from_file = self._load_vectors(con, meta)
        self._cache = (state, index)
        return index, not from_file

    def _load_vectors(self, con: sqlite3.Connection, meta: dict) -> tuple[Any, bool]:
        """A fresh FAISS index matching the table: the file if its ids match, else rebuilt. -> (index, from_file)"""
        dim = meta["dim"]
        if self.faiss_path.is_file():
            try:
                index = faiss.read_index(str(self.faiss_path))
                ids = np.fromiter((r[0] for r in con.execute("SELECT id FROM images ORDER BY id")), dtype=np.int64)
                if index.d == dim and np.array_equal(np.sort(faiss.vector_to_array(index.id_map)), ids):
                    return index, True
                log.info("%s does not match %s; rebuilding it", self.faiss_path, self.sqlite_path)
            except (RuntimeError, AttributeError) as exc:  # unreadable or not an IndexIDMap
                log.warning("cannot read %s (%s); rebuilding it", self.faiss_path, exc)
        elif meta["generation"] > 0:
            log.info("%s is missing; rebuilding it from %s", self.faiss_path, self.sqlite_path)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        cur = con.execute("SELECT id, vector FROM images")
        while rows := cur.fetchmany(10_000):
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
            index.add_with_ids(vectors.astype(np.float32), np.asarray([r[0] for r in rows], dtype=np.int64))
        return index, False

    def _save_vectors(self, index) -> None:
        # After the commit: a failure here costs only a rebuild on the next open, so warn instead of failing.
        try:
            atomic_write_bytes(self.faiss_path, faiss.serialize_index(index))
            # mkstemp makes 0600 files; give it meta.sqlite's mode so the same users can read both
            os.chmod(self.faiss_path, stat.S_IMODE(self.sqlite_path.stat().st_mode))
        except OSError as exc:
            log.warning("could not write %s (%s); it will be rebuilt on next open", self.faiss_path, exc)

    def _try_save(self, index, meta: dict) -> None:
        """A reader that rebuilt the cache writes it back, unless a writer is busy or has committed since."""
        try:
            with FileLock(str(self.lock_path), timeout=0):
                with closing(self._connect()) as con:
                    now = self._meta(con)
                if now is not None and (now["uid"], now["generation"]) == (meta["uid"], meta["generation"]):
                    self._save_vectors(index)
        except (Timeout, OSError) as exc:  # busy, or a read-only folder: searching still works
            log.debug("not writing %s: %s", self.faiss_path, exc)


# -- helpers on an open connection ------------------------------------------------
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


def _plan(con: sqlite3.Connection, files: list[ImageFile], known: dict[str, _Row], report: UpdateReport
          ) -> tuple[list[int], list[tuple[ImageFile, bool, str | None]]]:
    """Compare files with their stored rows (popped from `known`): -> row ids to drop and files to embed as
    (file, is_update, sha256 if already computed). Unchanged files count in the report; a file touched without a
    content change only gets its new mtime."""
    drop: list[int] = []
    todo: list[tuple[ImageFile, bool, str | None]] = []
    for f in files:
        row = known.pop(f.path, None)
        if row is None:
            todo.append((f, False, None))
        elif (row.size, row.mtime_ns) == (f.size, f.mtime_ns):
            report.unchanged += 1
        elif row.size != f.size:
            drop.append(row.id)
            todo.append((f, True, None))
        else:
            try:
                digest = file_sha256(f.path)
            except OSError as exc:
                report.skipped.append((f.path, f"cannot read ({exc.strerror})"))
                drop.append(row.id)  # don't keep a vector for content we can't see
                continue
            if digest == row.sha256:  # touched or copied, same bytes: remember the new mtime only
                con.execute("UPDATE images SET mtime_ns = ? WHERE id = ?", (f.mtime_ns, row.id))
                report.unchanged += 1
            else:
                drop.append(row.id)
                todo.append((f, True, digest))
    return drop, todo


def _rows_at(con: sqlite3.Connection, paths: list[str]) -> dict[str, _Row]:
    rows = _select_in(con, "path, id, size, mtime_ns, sha256", "path", paths)
    return {path: _Row(*rest) for path, *rest in rows}


def _select_in(con: sqlite3.Connection, columns: str, key: str, values: list) -> Iterator[tuple]:
    """SELECT columns FROM images WHERE key IN values, in chunks under SQLite's bound-parameter limit."""
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        yield from con.execute(f"SELECT {columns} FROM images WHERE {key} IN ({','.join('?' * len(chunk))})", chunk)


def _rows_under(con: sqlite3.Connection, root: Path) -> dict[str, _Row]:
    prefix = str(root) if str(root).endswith(os.sep) else str(root) + os.sep
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # every path starting with prefix sorts in [prefix, upper)
    rows = con.execute(
        "SELECT path, id, size, mtime_ns, sha256 FROM images WHERE path >= ? AND path < ?", (prefix, upper)
    )
    return {path: _Row(*rest) for path, *rest in rows}


def _delete(con: sqlite3.Connection, index, ids: Sequence[int]) -> None:
    if ids:
        con.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in ids])
        index.remove_ids(np.asarray(ids, dtype=np.int64))


def _touch(con: sqlite3.Connection, meta: dict, bump: bool) -> tuple:
    """Record the update time; bump the generation when vectors changed. -> the new (uid, generation)."""
    generation = meta["generation"] + int(bump)
    con.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [("generation", str(generation)), ("updated", _now())],
    )
    return meta["uid"], generation


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
