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

import logging
import os
import re
import socket
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from polymodal.errors import PolymodalError
from polymodal.index.store import Hit, ImageIndex, SearchByModel, check_query_dim, query_matrix
from polymodal.models.inputs import check_count

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "polymodal"
_ID_SPACE = uuid.UUID("6f1c1c53-8a55-4d4e-9a7e-2f0c3b1f6d2a")  # polymodal's namespace for point ids
_PAGE = 10_000  # ids per scroll page and per delete call


class QdrantUnavailable(PolymodalError):
    """The server could not be reached or failed (5xx): a passing condition, worth retrying."""


@dataclass
class PushReport:
    added: int = 0  # points sent to the collection
    removed: int = 0  # points of this index whose rows are gone
    unchanged: int = 0  # points already there

    def summary(self) -> str:
        return f"{self.added} added, {self.removed} removed, {self.unchanged} unchanged"


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
        self.api_key = api_key if api_key is not None else os.environ.get("QDRANT_API_KEY") or None
        self._client = None

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
    def push(self, index: ImageIndex, progress: bool = True, batch_size: int = 256) -> PushReport:
        """Make this collection hold exactly `index`'s images (its own points; other indexes' are left alone).

        Reads one committed snapshot of the index, so it may run beside `polymodal index` (it pushes what that
        had committed). Idempotent: an interrupted push is finished by running it again."""
        batch_size = check_count(batch_size, "batch_size")
        with index._reading() as (con, meta):
            rows = [r[0] for r in con.execute("SELECT id FROM images")]
            with self._errors():
                self._ensure(meta)
                have = self._own_ids(meta["uid"])
            want = {point_id(meta["uid"], r): r for r in rows}
            todo = [want[p] for p in want if p not in have]
            report = PushReport(unchanged=len(want) - len(todo))
            host = socket.gethostname()
            bar = tqdm(total=len(todo), desc=f"pushing to {self.collection}", unit="img", disable=not progress)
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                marks = ",".join("?" * len(chunk))
                found = con.execute(f"SELECT id, path, vector FROM images WHERE id IN ({marks})", chunk).fetchall()
                self._upsert(meta, host, found)
                report.added += len(found)
                bar.update(len(chunk))
            bar.close()
        gone = sorted(have - want.keys())
        with self._errors():
            from qdrant_client import models

            for i in range(0, len(gone), _PAGE):
                self._client_().delete(self.collection, models.PointIdsList(points=gone[i : i + _PAGE]), wait=True)
        report.removed = len(gone)
        return report

    def _upsert(self, meta: dict, host: str, found: list[tuple]) -> None:
        from qdrant_client import models

        vectors = [np.frombuffer(blob, dtype=np.float32).tolist() for _, _, blob in found]
        payloads = [{"path": path, "host": host, "index": meta["uid"]} for _, path, _ in found]
        with self._errors():
            self._client_().upsert(self.collection, wait=True, points=models.Batch(
                ids=[point_id(meta["uid"], r) for r, _, _ in found], vectors=vectors, payloads=payloads))

    def _ensure(self, meta: dict) -> None:
        """Make the collection for `meta`'s model, or check that the existing one holds that model's vectors."""
        from qdrant_client import models

        client = self._client_(create=True)
        if client.collection_exists(self.collection):
            self._check_model(self._meta(), meta["model"], meta["dim"], meta["model_name"])
            return
        client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=meta["dim"], distance=models.Distance.COSINE),
            metadata={"made_by": "polymodal", **{k: meta[k] for k in ("model", "model_name", "model_version", "dim")}},
        )
        if self.remote:  # pushes and deletes filter on it (local mode has no payload indexes and warns)
            client.create_payload_index(self.collection, "index", field_schema=models.PayloadSchemaType.KEYWORD)

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
    def search(self, query_vectors: Any, k: int = 10) -> list[list[Hit]]:
        """Nearest images by cosine for each query row ([Q, D] or [D]), as ImageIndex.search."""
        from qdrant_client import models

        k = check_count(k, "k")
        q = query_matrix(query_vectors)
        with self._errors():
            check_query_dim(q, self._meta(), self.where())
            answers = self._client_().query_batch_points(self.collection, requests=[
                models.QueryRequest(query=row.tolist(), limit=k, with_payload=["path", "host"]) for row in q])
        return [[Hit(p.payload["path"], float(p.score), p.payload.get("host"), str(p.id)) for p in a.points]
                for a in answers]

    def paths_for(self, ids: list[str]) -> dict[str, tuple[str, str | None]]:
        """Point id -> (path, host) for the ids that are in the collection."""
        with self._errors():
            found = self._client_().retrieve(self.collection, ids, with_payload=["path", "host"], with_vectors=False)
        return {str(p.id): (p.payload["path"], p.payload.get("host")) for p in found}

    def check_model(self, model) -> None:
        with self._errors():
            self._check_model(self._meta(), model.key, model.dim, model.name)

    def info(self) -> dict:
        with self._errors():
            meta = self._meta()
            count = self._client_().count(self.collection, exact=True).count
        return {"qdrant": self.location, "collection": self.collection, "count": count,
                **{k: meta.get(k) for k in ("model", "model_name", "model_version", "dim")}}

    def _meta(self) -> dict:
        client = self._client_()
        if not client.collection_exists(self.collection):
            raise PolymodalError(f"no {self.where()}; push an index into it with `polymodal index --db DB --qdrant "
                                 f"{self.location} --collection {self.collection}`")
        meta = client.get_collection(self.collection).config.metadata or {}
        if meta.get("made_by") != "polymodal":
            raise PolymodalError(f"{self.where()} was not made by polymodal (it has no model recorded); pass another "
                                 "--collection")
        return meta

    def _check_model(self, meta: dict, key: str, dim: int, name: str) -> None:
        if meta["model"] != key or int(meta["dim"]) != dim:
            raise PolymodalError(f"{self.where()} holds vectors of model {meta['model']} (dim {meta['dim']}), not "
                                 f"{key} (dim {dim}); use --model {meta['model_name']} with it, or another "
                                 f"--collection for {name}")

    # -- the client --------------------------------------------------------------
    def _client_(self, create: bool = False):
        if self._client is None:
            try:
                from qdrant_client import QdrantClient
            except ImportError:
                raise PolymodalError("the Qdrant backend needs the qdrant extra: pip install 'polymodal[qdrant]'") from None
            folder = os.path.expanduser(self.location)
            if not self.remote and not create and not os.path.isdir(folder):  # a typo must not leave a new folder
                raise PolymodalError(f"no Qdrant folder at {self.location}; push an index there first (polymodal "
                                     f"index --db DB --qdrant {self.location}), or pass a server URL (http://...)")
            with self._errors(), warnings.catch_warnings():
                # an unreachable server gets our one-line error at its first call; this warning would come first
                warnings.filterwarnings("ignore", message="Failed to obtain server version")
                if self.remote:
                    self._client = QdrantClient(url=self.location, api_key=self.api_key, timeout=60)
                else:
                    self._client = QdrantClient(path=folder)
        return self._client

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Qdrant's exceptions as one PolymodalError saying what to do."""
        try:
            yield
        except PolymodalError:
            raise
        except Exception as exc:  # the client raises several unrelated types (httpx, its own, RuntimeError)
            raise self._explain(exc) from exc

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
                                     "--qdrant")
        if "already accessed by another instance" in str(exc):
            return PolymodalError(f"the Qdrant folder {self.location} is open in another process (local mode allows "
                                  "one at a time); stop that one, or run a Qdrant server and pass its URL")
        return PolymodalError(f"{self.where()}: {type(exc).__name__}: {exc}")
