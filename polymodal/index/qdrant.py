"""A Qdrant collection as the search side of one or more image indexes: for indexes that outgrow one machine.

The local index (`ImageIndex`, SQLite) stays the source of truth for what is embedded: the folder scan, the
incremental updates and the remembered failures all live there, and nothing is embedded twice. `push` makes the
collection hold exactly the index's rows; search then runs on the Qdrant server (HNSW, sharded and replicated as
the server is set up), from any machine, with no local index at all.

Several indexes (one per machine, say) can push into one collection: every point carries its index's uid and the
host it was pushed from, and a push adds and deletes only its own index's points. A point's id is
uuid5(index uid, row id): a row's vector never changes and row ids are never reused, so a push is a difference of
id sets, never a comparison of vectors, and re-running it after an interruption sends only what is missing.

`location` is a server URL (http://host:6333, https://...; the key from QDRANT_API_KEY) or a folder, which runs
Qdrant's embedded local mode (one process at a time; for trying it out and for tests).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import socket
import uuid
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.index.hits_view import Hits
from polymodal.index.store import (Hit, ImageIndex, IndexModelMismatch, SearchByModel, check_query_dim, mismatch_fix,
                                   query_matrix)
from polymodal.models.inputs import check_count
from polymodal.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "polymodal"
NEEDS_EXTRA = "the Qdrant backend needs the qdrant extra: pip install 'polymodal[qdrant]'"
_ID_SPACE = uuid.UUID("6f1c1c53-8a55-4d4e-9a7e-2f0c3b1f6d2a")  # polymodal's namespace for point ids
_PAGE = 10_000  # ids per scroll page and per delete call
_FLOATS_PER_REQUEST = 2**19  # vector floats per upsert: 256 rows of 2048 dims
# a collection holds one model's vectors: an index of another goes elsewhere (QdrantCollection(url, collection=))
TO_ANOTHER = "push the index to another --collection (another collection= in Python)"


class QdrantUnavailable(PolymodalError):
    """The server could not be reached or failed (5xx): a passing condition, worth retrying."""


@dataclass
class PushReport:
    added: int = 0  # points sent to the collection
    removed: int = 0  # points of this index whose rows are gone
    unchanged: int = 0  # points already there
    replaced: int = 0  # points of an earlier index at the same place (host and --db): rebuilt since

    def summary(self) -> str:
        replaced = f", {self.replaced} of an earlier index at this --db removed" if self.replaced else ""
        return f"{self.added} added, {self.removed} removed, {self.unchanged} unchanged{replaced}"


def point_id(index_uid: str, row_id: int) -> str:
    return str(uuid.uuid5(_ID_SPACE, f"{index_uid}:{row_id}"))


class QdrantCollection(SearchByModel):
    """Collection `collection` on the Qdrant at `location` (see the module docstring). Nothing is touched until a
    method runs; the collection is made by the first push."""

    def __init__(self, location: str, collection: str = DEFAULT_COLLECTION, api_key: str | None = None) -> None:
        if not isinstance(location, str) or not location.strip():
            raise PolymodalError("--qdrant needs a server URL (http://host:6333) or a folder for Qdrant's local mode")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", collection or ""):
            raise PolymodalError(f"collection name {collection!r}: use letters, digits, _ and - (e.g. photos)")
        self.location, self.collection = location.strip(), collection
        self.remote = bool(re.match(r"https?://", self.location, re.I))
        if not self.remote and re.fullmatch(r"[\w.-]+:\d+", self.location) and not os.path.exists(self.location):
            raise PolymodalError(f"--qdrant {self.location}: a server needs its scheme, e.g. http://{self.location}; "
                                 "a folder name is taken as Qdrant's local mode")
        # any other address-like value (http:/host, grpc://host:6334, host:6333/) would be taken as a folder, made
        # in the current one, and a push there would "succeed" with nothing sent to the server (a folder that exists
        # stays local mode; "C:/..." has a one-letter scheme; a port is digits up to a "/" or the end, so a new
        # folder named with a time, "qdrant-2024-05-01T10:30:00", stays a folder)
        if (not self.remote and re.match(r"[A-Za-z][\w+.-]+:(/|\d+(/|$))", self.location)
                and not os.path.exists(os.path.expanduser(self.location))):
            raise PolymodalError(f"--qdrant {self.location} looks like a server address, but polymodal talks to Qdrant "
                                 "over http:// or https:// only (the REST port, 6333 by default), e.g. "
                                 "http://localhost:6333; a folder name is taken as Qdrant's local mode")
        self.api_key = api_key if api_key is not None else os.environ.get("QDRANT_API_KEY") or None
        self._client = None
        self._metadata: dict | None = None  # the collection's, once read: a search then costs one request, not three

    def __repr__(self) -> str:
        return f"QdrantCollection({self.location!r}, {self.collection!r})"

    def where(self) -> str:
        return f"Qdrant collection {self.collection} at {self.location}"

    def exists(self) -> bool:
        if not self.remote and not os.path.isdir(os.path.expanduser(self.location)):
            return False
        with self._errors():
            return self._client_().collection_exists(self.collection)

    # -- writing ---------------------------------------------------------------
    def preflight(self, model) -> None:
        """Before a long update that ends in a push: the server answers, the key works, and an existing collection
        holds `model`'s vectors (found after an hour of embedding, each would be a wasted wait)."""
        with self._errors():
            if self._client_(create=True).collection_exists(self.collection):
                self._check_model(self._meta(), model.key, model.dim, TO_ANOTHER)

    def push(self, index: ImageIndex, progress: bool = True, batch_size: int = 256) -> PushReport:
        """Make this collection hold exactly `index`'s images (its own points; other indexes' are left alone).

        Reads one committed snapshot of the index, so it may run beside `polymodal index` (it pushes what that
        had committed). Idempotent: an interrupted push is finished by running it again."""
        batch_size = check_count(batch_size, "batch_size")
        if isinstance(index, (str, os.PathLike)):  # push("pics.idx"): the folder, as --db gives it (no AttributeError)
            index = ImageIndex(index)
        with index._reading() as (con, meta):
            rows = [r[0] for r in con.execute("SELECT id FROM images")]
            origin = {"host": socket.gethostname(), "db": str(index.db)}
            with self._errors():
                self._ensure(meta)
                replaced = self._drop_replaced(meta["uid"], origin)
                self._check_not_a_copy(meta["uid"], origin)
                have = self._own_ids(meta["uid"])
            todo = []  # rows without a point; what stays in `have` are points whose rows are gone
            for r in rows:  # no {point id: row} map beside `have`: millions of rows would hold both in memory
                p = point_id(meta["uid"], r)
                if p in have:
                    have.discard(p)
                else:
                    todo.append(r)
            report = PushReport(unchanged=len(rows) - len(todo), replaced=replaced)
            del rows
            # JSON costs about 21 bytes a float: keep each upsert near 11 MB, well under a server's 32 MB default
            batch_size = max(1, min(batch_size, _FLOATS_PER_REQUEST // meta["dim"]))
            bar = progress_bar(total=len(todo), desc=f"pushing to {self.collection}", unit="img",
                               disable=not progress or not todo)  # no "0img" bar when there is nothing to send
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                marks = ",".join("?" * len(chunk))
                found = con.execute(f"SELECT id, path, vector FROM images WHERE id IN ({marks})", chunk).fetchall()
                self._upsert(meta, origin, found)
                report.added += len(found)
                bar.update(len(chunk))
            bar.close()
        gone = sorted(have)
        with self._errors():
            from qdrant_client import models

            for i in range(0, len(gone), _PAGE):
                self._client_().delete(self.collection, models.PointIdsList(points=gone[i : i + _PAGE]), wait=True)
        report.removed = len(gone)
        return report

    def _upsert(self, meta: dict, origin: dict, found: list[tuple]) -> None:
        from qdrant_client import models

        vectors = [np.frombuffer(blob, dtype=np.float32).tolist() for _, _, blob in found]
        # each point names its model: a server searching a collection pushed again from another model's index finds
        # out from the hits (the collection's metadata is read once)
        payloads = [{"path": path, **origin, "index": meta["uid"], "model": meta["model"]} for _, path, _ in found]
        with self._errors():
            self._client_().upsert(self.collection, wait=True, points=models.Batch(
                ids=[point_id(meta["uid"], r) for r, _, _ in found], vectors=vectors, payloads=payloads))

    def _ensure(self, meta: dict) -> None:
        """Make the collection for `meta`'s model, or check that the existing one holds that model's vectors."""
        from qdrant_client import models

        client = self._client_(create=True)
        self._metadata = None  # a long-lived collection object: the collection may have been made again since
        if not client.collection_exists(self.collection):
            try:
                client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(size=meta["dim"], distance=models.Distance.COSINE),
                    metadata={"made_by": "polymodal",
                              **{k: meta[k] for k in ("model", "model_name", "model_version", "dim")},
                              # the options the index's model was loaded with (tokenizer=DIR): search loads it so
                              **({"model_options": json.loads(meta["model_options"])} if "model_options" in meta
                                 else {})},
                )
            except Exception:
                if not client.collection_exists(self.collection):
                    raise
                # another push made it meanwhile: checked below like any existing collection
            else:
                if not (client.get_collection(self.collection).config.metadata or {}).get("made_by"):
                    # a server before 1.16 takes the request and drops the metadata: nothing could search it later
                    client.delete_collection(self.collection)
                    raise PolymodalError(f"Qdrant at {self.location} does not keep collection metadata (servers "
                                         "before 1.16), where polymodal records the model; upgrade the server")
        # the index's model is fixed: the way out is another collection (--model would re-embed the index)
        self._check_model(self._meta(), meta["model"], meta["dim"], TO_ANOTHER)
        # pushes and deletes filter on it; checked on every push, as a push stopped right after creating the
        # collection leaves it without (local mode has no payload indexes and warns)
        if self.remote:
            indexed = client.get_collection(self.collection).payload_schema or {}
            for field in ("index", "host", "db"):
                if field not in indexed:
                    client.create_payload_index(self.collection, field, field_schema=models.PayloadSchemaType.KEYWORD)

    def _drop_replaced(self, uid: str, origin: dict) -> int:
        """Delete the points of earlier indexes pushed from this host and --db folder: an index rebuilt there (a new
        uid) replaces the old one, whose points would otherwise stay as duplicate results for good."""
        from qdrant_client import models

        same = [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in origin.items()]
        stale = models.Filter(must=same, must_not=[models.FieldCondition(key="index", match=models.MatchValue(value=uid))])
        count = self._client_().count(self.collection, count_filter=stale, exact=True).count
        if count:
            self._client_().delete(self.collection, models.FilterSelector(filter=stale), wait=True)
        return count

    def _check_not_a_copy(self, uid: str, origin: dict) -> None:
        """Refuse a push when points of this index's uid came from another --db folder that still holds it, or
        from another host's other --db: that is a copy of this index (a backup, a seeded second machine), whose row
        ids -> point ids collide with ours, so the two pushes would overwrite and delete each other's images. An
        index moved on this host (its old folder gone or another index now), or this --db pushed from a new
        hostname (a restarted container), takes its points over: they are renamed to this folder."""
        from qdrant_client import models

        def at(place: dict) -> models.Filter:
            return models.Filter(must=[models.FieldCondition(key=k, match=models.MatchValue(value=v))
                                       for k, v in place.items() if v is not None])

        mine = models.FieldCondition(key="index", match=models.MatchValue(value=uid))
        checked = [origin]
        while True:  # every other origin of this uid, not the first point's only: a copy may hide behind a moved one
            elsewhere = models.Filter(must=[mine], must_not=[at(o) for o in checked])
            points, _ = self._client_().scroll(self.collection, scroll_filter=elsewhere, limit=1,
                                               with_payload=["host", "db"], with_vectors=False)
            if not points:
                break
            host, db = points[0].payload.get("host"), points[0].payload.get("db")
            if host == origin["host"] or db == origin["db"]:  # this host, or this --db on a renamed host/new pod
                try:
                    other = ImageIndex(db) if db != origin["db"] else None
                    alive = other is not None and other.exists() and other._uid() == uid
                except (PolymodalError, OSError, TypeError):
                    alive = False
                if not alive:  # moved (or the host renamed): the points are ours
                    checked.append({"host": host, "db": db})
                    continue
            raise PolymodalError(f"{self.where()} holds points pushed from the index at {host}:{db}, which shares "
                                 f"its id with the index at {origin['db']}: one was copied from the other, and their "
                                 "pushes would overwrite each other's images; push the copy into another --collection, "
                                 "or rebuild it with a new --db (another collection=, or an ImageIndex of a new "
                                 "folder, in Python)")
        if len(checked) > 1:  # taken over: the points name this folder from now on (a later rebuild here drops them)
            self._client_().set_payload(self.collection, payload=origin, points=models.Filter(must=[mine]), wait=True)

    def _own_ids(self, uid: str) -> set[str]:
        from qdrant_client import models

        own = models.Filter(must=[models.FieldCondition(key="index", match=models.MatchValue(value=uid))])
        ids, offset = set(), None
        while True:
            points, offset = self._client_().scroll(self.collection, scroll_filter=own, limit=_PAGE, offset=offset,
                                                    with_payload=False, with_vectors=False)
            ids.update(str(p.id) for p in points)
            if offset is None:
                return ids

    # -- reading ---------------------------------------------------------------
    def search(self, query_vectors: Any, k: int = 10, model=None) -> list[Hits]:
        """Nearest images by cosine for each query row ([Q, D] or [D]), as ImageIndex.search. ``model``: the model
        that made the queries; hits of another model's vectors (the collection was deleted and pushed again from
        another model's index) raise IndexModelMismatch, as a rebuilt local index does."""
        from qdrant_client import models

        k = check_count(k, "k")
        q = query_matrix(query_vectors)
        with self._errors():
            check_query_dim(q, self._meta(), self.where())
            answers = self._client_().query_batch_points(self.collection, requests=[
                models.QueryRequest(query=row.tolist(), limit=k, with_payload=["path", "host", "model"]) for row in q])
            hit_models = {p.payload.get("model") for a in answers for p in a.points} - {None}  # older pushes: none
            if hit_models - {self._meta()["model"]}:
                self._metadata = None  # replaced since it was read
            if model is not None and (hit_models | {self._meta()["model"]}) != {model.key}:
                raise IndexModelMismatch(f"{self.where()} now holds vectors of model {self._meta()['model']}, not "
                                         f"{model.key}")
        # scores as float32, as the local index gives them (Qdrant's float64 showed 1.0000000000000002 for a photo
        # against itself)
        return [Hits(Hit(p.payload["path"], float(np.clip(np.float32(p.score), -1, 1)), p.payload.get("host"),
                         str(p.id)) for p in a.points) for a in answers]

    def paths_for(self, ids: list[str]) -> dict[str, tuple[str, str | None]]:
        """Point id -> (path, host) for the ids that are in the collection."""
        with self._errors():
            found = self._client_().retrieve(self.collection, ids, with_payload=["path", "host"], with_vectors=False)
        return {str(p.id): (p.payload["path"], p.payload.get("host")) for p in found}

    def vectors_of(self, ids: list[str]) -> dict[str, np.ndarray]:
        """Point id -> its stored vector (float32), for the ids in the collection ("more like this" searches)."""
        with self._errors():
            found = self._client_().retrieve(self.collection, ids, with_payload=False, with_vectors=True)
        return {str(p.id): np.asarray(p.vector, dtype=np.float32) for p in found}

    def check_model(self, model) -> None:
        with self._errors():
            meta = self._meta()
            self._check_model(meta, model.key, model.dim,
                              mismatch_fix(meta, model, "with it", f"another --collection for {model.name}",
                                           "push an index built with it into another --collection",
                                           "another collection="))

    def info(self) -> dict:
        with self._errors():
            meta = self._meta()
            count = self._client_().count(self.collection, exact=True).count
        # a local-mode folder as an absolute path, like the index's "db": the relative one means nothing elsewhere
        where = self.location if self.remote else os.path.abspath(os.path.expanduser(self.location))
        return {"qdrant": where, "collection": self.collection, "count": count,
                **{k: meta.get(k) for k in ("model", "model_name", "model_version", "dim")},
                **({"model_options": meta["model_options"]} if meta.get("model_options") else {})}

    def _meta(self) -> dict:
        if self._metadata is None:
            self._metadata = self._read_meta()
        return self._metadata

    def _read_meta(self) -> dict:
        client = self._client_()
        if not client.collection_exists(self.collection):
            raise PolymodalError(f"no {self.where()}; push an index into it with `polymodal index --db DB --qdrant "
                                 f"{self.location} --collection {self.collection}` (.push(ImageIndex(DB)) in "
                                 "Python)")
        meta = client.get_collection(self.collection).config.metadata or {}
        if meta.get("made_by") != "polymodal":
            raise PolymodalError(f"{self.where()} was not made by polymodal (it has no model recorded); pass another "
                                 "--collection (another collection= in Python)")
        return meta

    def _check_model(self, meta: dict, key: str, dim: int, fix: str) -> None:
        if meta["model"] != key or int(meta["dim"]) != dim:
            raise PolymodalError(f"{self.where()} holds vectors of model {meta['model']} (dim {meta['dim']}), not "
                                 f"{key} (dim {dim}); {fix}")

    # -- the client --------------------------------------------------------------
    def _client_(self, create: bool = False):
        if self._client is None:
            try:
                from qdrant_client import QdrantClient
            except ImportError:
                raise PolymodalError(NEEDS_EXTRA) from None
            folder = os.path.expanduser(self.location)
            if not self.remote and not create and not os.path.isdir(folder):  # a typo must not leave a new folder
                raise PolymodalError(f"no Qdrant folder at {self.location}; push an index there first (polymodal "
                                     f"index --db DB --qdrant {self.location}; .push(ImageIndex(DB)) in Python), or "
                                     "pass a server URL (http://...)")
            if not self.remote:
                self._check_local_folder(folder)
            with self._errors():
                if self.remote:  # no version check: the client runs it in a thread whose warnings would
                    # come out between our lines (and after our one-line error for an unreachable server)
                    self._client = QdrantClient(url=self.location, api_key=self.api_key, timeout=60,
                                                check_compatibility=False)
                else:
                    self._client = QdrantClient(path=folder)
            # closed before the interpreter tears down its modules: the client's own __del__ at exit fails in local
            # mode ("sys.meta_path is None") and prints a traceback; a weak reference keeps no client alive
            ref = weakref.ref(self._client)
            atexit.register(lambda: (client := ref()) is not None and client.close())
        return self._client

    def _check_local_folder(self, folder: str) -> None:
        """Refuse a file, or a folder holding other things (the photos, an index): local mode would write its
        files there."""
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise PolymodalError(f"--qdrant {self.location} is a file; pass a folder for Qdrant's local mode, or a "
                                 "server URL (http://host:6333)")
        if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, "meta.json")):
            other = sorted(n for n in os.listdir(folder) if not n.startswith("."))
            if other:
                raise PolymodalError(f"--qdrant {self.location} is a folder holding other files ({other[0]}, ...) "
                                     "and no Qdrant data; pass a new or empty folder for Qdrant's local mode, or a "
                                     "server URL (http://host:6333)")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Qdrant's exceptions as one PolymodalError saying what to do."""
        try:
            yield
        except Exception as exc:
            self._metadata = None  # read again next time: the collection may be gone, or made anew
            if isinstance(exc, PolymodalError):
                raise
            if isinstance(exc, ImportError) and (exc.name or "").partition(".")[0] == "qdrant_client":
                raise PolymodalError(NEEDS_EXTRA) from None
            raise self._explain(exc) from exc  # the client raises several unrelated types (httpx, its own, ...)

    def _explain(self, exc: Exception) -> PolymodalError:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if isinstance(exc, UnexpectedResponse):
            if exc.status_code in (401, 403):
                return PolymodalError(f"Qdrant at {self.location} refused the request ({exc.status_code}); set "
                                      "QDRANT_API_KEY")
            kind = QdrantUnavailable if exc.status_code >= 500 else PolymodalError
            return kind(f"Qdrant at {self.location} answered {exc.status_code}: {exc.content[:300]!r}")
        if isinstance(exc, ResponseHandlingException):
            return QdrantUnavailable(f"cannot reach Qdrant at {self.location} ({exc}); start the server, or fix "
                                     "--qdrant (the location in Python)")
        if "already accessed by another instance" in str(exc):
            return PolymodalError(f"the Qdrant folder {self.location} is open in another process (local mode allows "
                                  "one at a time); stop that one, or run a Qdrant server and pass its URL")
        return PolymodalError(f"{self.where()}: {type(exc).__name__}: {exc}")
