"""What the HTTP layer calls: one model, one index, one model thread. No FastAPI here.

Paths from requests are never opened: searches and thumbnails reach files only through ids stored in the index,
and uploads are written under `DB/uploads/<batch>/` with names the server chooses. The index is a local one
(`--db`: searched and written) or a Qdrant collection (`--qdrant`: searched; its indexes push to it), so that
several servers can share one large collection.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import socket
import sqlite3
import stat
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from polymodal.data.images import draft_size_of, open_image, to_rgb
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex, IndexBusy
from polymodal.index.store import IndexDamaged, IndexModelMismatch
from polymodal.index.qdrant import QdrantCollection, QdrantUnavailable
from polymodal.index.scan import canonical_path, stream_sha256
from polymodal.registry import answers, require_captioner, require_embedding, require_vqa
from polymodal.serve.batching import BatchedModel, MicroBatcher
from polymodal.serve.busy import BusyWriter
from polymodal.serve.limits import INDEXED_FORMATS, ApiError, ServeSettings, image_suffix, open_image_checked
from polymodal.serve.metrics import Metrics
from polymodal.serve.writes import GroupCommit

log = logging.getLogger(__name__)

UPLOADS = "uploads"
ORPHAN_AGE_S = 3600  # an upload batch with no indexed rows older than this is from a crashed add: deleted at start
BATCH_NAME = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, as _stage names a batch folder


def preprocesses_outside(model) -> bool:
    """True for models whose encode_image is EmbeddingInterface's, transform then embed_pixels (the PyTorch models
    and the ONNX runtime, unless a subclass overrides it): the service can then run the transform in the request's
    thread, so the one model thread only runs forward passes and a request holds a 224x224 array instead of its full
    decoded image while it waits. Checked without importing torch (the ONNX runtime must not need it)."""
    from polymodal.models.interface import EmbeddingInterface  # torch-free

    return (
        getattr(type(model), "encode_image", None) is EmbeddingInterface.encode_image
        and callable(getattr(model, "embed_pixels", None))
        and callable(getattr(model, "transform", None))
    )


def runs_on(model) -> dict:
    """What executes the model: {"runtime": "torch", "precision": the image tower's ("fp32" if it has none)} or
    {"runtime": "onnx", "precision": the served graph variant per tower, e.g. "image=int8_static, text=fp32"}."""
    variants = getattr(model, "variants", None)
    if type(model).__module__.startswith("polymodal.export") and isinstance(variants, dict):
        return {"runtime": "onnx", "precision": ", ".join(f"{k}={v}" for k, v in variants.items())}
    return {"runtime": "torch", "precision": getattr(getattr(model, "image_tower", None), "precision", "fp32")}


def open_index(db: str | Path | QdrantCollection) -> ImageIndex | QdrantCollection:
    """A collection as it is, or the local index in folder `db` (its vectors on 2 MB pages: a server searches on)."""
    return db if isinstance(db, QdrantCollection) else ImageIndex(db, huge_pages=True)


def thumb_ref(image_id: int | str, path: str, digest: str = "", key: bytes = b"") -> str:
    """The thumbnail's URL path. Browsers keep a thumbnail a day: ?v= (from the photo's path and, for a local index,
    the sha256 its row records) gives an index rebuilt at the same place, whose ids start again at 1, new URLs
    instead of the old photos' thumbnails, also for a photo edited in place that gets its old id back. `key`: the
    server's secret under --hide-paths (Service.thumb_key), without which ?v= confirms a guessed path offline."""
    text = f"{path}\0{digest}".encode()
    return f"/v1/thumb/{image_id}?v={hashlib.blake2b(text, digest_size=4, key=key).hexdigest()}"


class Service:
    """`model` embeds, searches and classifies over the index; `vqa_model` (default: `model`, if it answers questions)
    answers /v1/vqa: an index holds embeddings, so a VQA model is served next to the index's own embedding model;
    `caption_model` writes /v1/caption's captions. `db` None (with `model` None): no index and no embedding model,
    a server of /v1/vqa or /v1/caption alone."""

    def __init__(self, model, db: str | Path | QdrantCollection | None, settings: ServeSettings | None = None,
                 vqa_model=None, caption_model=None) -> None:
        self.settings = settings or ServeSettings()
        self.index = open_index(db) if db is not None else None
        self.local = isinstance(self.index, ImageIndex)  # else a collection: ids are point ids, paths its payloads
        # a collection is written by its indexes' pushes; a local index in a folder this process cannot write (a
        # read-only mount, another user's index) is searched only: adding to it failed as a 500
        self.writable = self.local and os.access(self.index.db, os.W_OK)
        if self.index is not None:
            require_embedding(model)
            self.index.check_model(model)  # also: a missing index raises here, with the command that builds one
        self.model = model
        self.vqa_model = require_vqa(vqa_model) if vqa_model is not None else model if answers(model) else None
        self.caption_model = require_captioner(caption_model) if caption_model is not None else None
        self.uploads = self.index.db / UPLOADS if self.local else None
        self._hidden = _places_of(self.index) if self.settings.hide_paths and self.index is not None else []
        # per process, never stored (a read-only index or a collection has no place for it): a restart only makes
        # browsers fetch each thumbnail once more; servers sharing a collection give their own ?v=, which none checks
        self.thumb_key = os.urandom(32) if self.settings.hide_paths else b""
        self.metrics = Metrics()
        s = self.settings
        self.pixels = preprocesses_outside(model)
        # uploads decode as files do for the model that reads them (a camera JPEG at reduced scale for the lite
        # towers); resolved once here: coco-yesno's transform loads its base model, not to be raced by requests
        readers = (model, self.vqa_model, self.caption_model)
        self.draft_sizes = {id(m): draft_size_of(m) for m in readers if m is not None}
        self.batcher = MicroBatcher(
            model, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms, enabled=s.batching,
            on_batch=self.metrics.observe_batch, image_forward=self._forward_pixels if self.pixels else None,
        )
        self._write_lock = threading.Lock()  # adds and removes, one group at a time (the index also has a file lock)
        self.busy = BusyWriter()  # how long clients refused by another writer of the index should wait
        # queued adds (removes) are written as one index update: a group holds up to 4 full requests' images
        self.writes = GroupCommit(self._write_lock, self._write_group, 4 * s.max_images_per_request,
                                  s.request_timeout_s, self._waited_too_long)
        self._thumbs: OrderedDict[tuple[int | str, str], bytes] = OrderedDict()
        self._thumbs_lock = threading.Lock()
        self._refusals_logged: set[str] = set()  # link folders whose refused thumbnails were logged once
        if self.index is not None:
            self.metrics.gauge("polymodal_index_images", "Images in the index.", self.count)
        self.metrics.gauge("polymodal_queue_depth", "Model jobs waiting for the model thread.", self.batcher.pending)

    @property
    def vqa(self) -> bool:
        return self.vqa_model is not None

    def endpoints(self) -> dict[str, str]:
        """A server without an index: {endpoint: what it gives}, what its page's title and the warning of a server
        open to anyone name (instead of search and the index)."""
        served = {"/v1/vqa": ("answers", self.vqa), "/v1/caption": ("captions", self.caption_model is not None)}
        return {path: what for path, (what, on) in served.items() if on}

    def start(self) -> None:
        self.batcher.start()
        if not self.writable:
            return
        try:
            self.clean_orphan_uploads()
        except (OSError, PolymodalError) as exc:  # housekeeping only
            log.warning("could not clean orphan uploads in %s: %s", self.uploads, exc)

    def close(self) -> None:
        self.batcher.close()

    def count(self) -> int:
        return self.index.info()["count"]

    def info(self) -> dict:
        """Without an index: "index" null and the embedding model's fields null (a /v1/vqa or /v1/caption server)."""
        m, index = self.model, None
        if self.index is not None:
            with self._serving_index():
                info = self.index.info()
            index = {"count": info["count"], "model": info["model"], "updated": info.get("updated"),
                     "writable": self.writable, "where": self.where(), "paths_hidden": self.settings.hide_paths}
        return {
            "model": {"name": m and m.name, "key": m and m.key, "dim": m and m.dim, "vqa": self.vqa,
                      "vqa_model": self.vqa_model.key if self.vqa else None,
                      "caption_model": self.caption_model.key if self.caption_model is not None else None,
                      **(runs_on(m) if m is not None else {"runtime": None, "precision": None})},
            "index": index,
            "batching": {"enabled": self.batcher.enabled, "max_batch": self.batcher.max_batch,
                         "max_wait_ms": self.batcher.max_wait * 1000},
            "limits": self.settings.public(),
        }

    def not_ready(self) -> str | None:
        """Why searches cannot be answered now, in words naming no path (/readyz answers without the key); None when
        they can."""
        if self.index is None:  # a /v1/vqa or /v1/caption server: ready once its models are loaded
            return None
        try:
            with self._serving_index():
                model = self.index.info()["model"]
        except (ApiError, PolymodalError, OSError, sqlite3.Error):  # a damaged meta.sqlite: a 500 and a traceback
            # on every probe, where a probe wants the answer "not ready"
            return "the index cannot be searched now (moved, deleted, damaged or unreachable); /v1/info says why"
        if model and model != self.model.key:  # searches check this and answer 503
            return "the index was rebuilt with another model while serving; restart the server with that model"
        return None

    def where(self) -> str:
        """What this server serves, as clients are told: under hide_paths without the index's folder or Qdrant's
        address."""
        if not self.settings.hide_paths:
            return self.index.where()
        return "a local index" if self.local else f"Qdrant collection {self.index.collection}"

    def hide(self, text: str) -> str:
        """`text` (an error message, a skip reason) as a client may read it: under hide_paths, the index's folder
        (the uploads are in it) or Qdrant's address or folder replaced by <index> or <qdrant>. Messages name no
        other place of this machine: photos reach answers only as hits, whose paths search() shortens."""
        for place, shown in self._hidden:
            text = text.replace(place, shown)
        return text

    def shown_path(self, path: str) -> str:
        """A hit's path as clients get it: under hide_paths only the file's name (its id tells same-named files
        apart), as a relative path of a folder would still name projects or people (`/home/ann/acme-merger/`)."""
        return Path(path).name if self.settings.hide_paths else path

    def _gone(self) -> ApiError:
        if not self.local:
            return ApiError(503, f"{self.index.where()} is gone: it was deleted while serving; push an index to "
                            "it again (polymodal index --db DB --qdrant ...)", {"Retry-After": "30"})
        return ApiError(
            503, f"the index this server serves ({self.index.db}) is gone: it was moved or deleted while serving; "
            "put it back, or restart the server with --db pointing at an index", {"Retry-After": "30"},
        )

    @contextmanager
    def _serving_index(self) -> Iterator[None]:
        """A vanished index is the server's problem (503), not the client's (the PolymodalError's 400)."""
        try:
            yield
        except ApiError:
            raise
        except PolymodalError as exc:
            try:
                gone = not isinstance(exc, QdrantUnavailable) and not self.index.exists()
            except QdrantUnavailable as down:  # the server went away while answering: still the server's problem
                exc = down
            if isinstance(exc, QdrantUnavailable):
                raise ApiError(503, str(exc), {"Retry-After": "5"}) from None
            if isinstance(exc, IndexModelMismatch):  # the server's problem too: its model no longer fits
                raise ApiError(503, f"the index this server serves was rebuilt with another model while serving "
                                    f"({exc}); restart the server with that index's model") from None
            if gone:
                raise self._gone() from None
            raise

    # -- images in -------------------------------------------------------------------------------------------------
    def decode(self, uploads: list[tuple[str, bytes]], model, held: tuple[int, int] = (0, 0)) -> list[Image.Image]:
        """(name, bytes) -> RGB PIL images for `model` (decoded as it decodes files), each checked against the pixel
        limit before decoding. `held`: (images, pixels) of this request decoded before these, by earlier calls."""
        size, limit = self.draft_sizes.get(id(model)), self.settings.max_request_pixels
        images, (before, total) = [], held
        for name, data in uploads:
            images.append(open_image_checked(data, self.settings.max_image_pixels, name, size))
            total += images[-1].width * images[-1].height
            if total > limit:  # all of them stay decoded until the model has run: bound the memory one request holds
                raise ApiError(413, f"the first {before + len(images)} images of this request decode to {total:,} "
                                    f"pixels; the limit is {limit:,} ({limit / 1e6:g} MP) per request: send fewer or "
                                    "smaller images per request")
        return images

    def prepare(self, uploads: list[tuple[str, bytes]]) -> list:
        """(name, bytes) -> what the batcher's image jobs take: model input arrays [3, H, W] when the model allows
        (see preprocesses_outside), else PIL images. Run in a request thread, one image decoded at a time."""
        out, size = [], self.draft_sizes[id(self.model)]
        for name, data in uploads:
            image = open_image_checked(data, self.settings.max_image_pixels, name, size)
            out.append(self.model.transform([image])[0] if self.pixels else image)
        return out

    def _forward_pixels(self, items: list[np.ndarray]) -> np.ndarray:
        """On the model thread: [3, H, W] arrays -> L2-normalised [N, dim], exactly as the model's encode_image."""
        out = [np.zeros((0, self.model.dim), np.float32)]
        step = self.settings.max_batch
        for start in range(0, len(items), step):
            out.append(self.model.embed_pixels(np.stack(items[start : start + step])))
        return np.concatenate(out)

    # -- ids <-> paths (one read snapshot each) -----------------------------------------------------------------
    def _query(self, sql: str, keys: Sequence) -> list[tuple]:
        rows: list[tuple] = []
        with self.index._reading() as (con, _):  # the index's read snapshot; it has no public id lookup yet
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                rows += con.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    def ids_for(self, paths: Sequence[str]) -> dict[str, int]:
        return dict(self._query("SELECT path, id FROM images WHERE path IN ({})", list(dict.fromkeys(paths))))

    def paths_for(self, ids: Sequence[int]) -> dict[int, str]:
        return dict(self._query("SELECT id, path FROM images WHERE id IN ({})", list(dict.fromkeys(ids))))

    def digests_for(self, ids: Sequence[int]) -> dict[int, str]:
        return dict(self._query("SELECT id, sha256 FROM images WHERE id IN ({})", list(dict.fromkeys(ids))))

    def ids_for_digests(self, digests: Sequence[str]) -> dict[str, int]:
        """sha256 -> the id of a row holding those bytes (the lowest, when several do)."""
        rows = self._query("SELECT sha256, MIN(id) FROM images WHERE sha256 IN ({}) GROUP BY sha256",
                           list(dict.fromkeys(digests)))
        return dict(rows)

    # -- reading ---------------------------------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int) -> list[list[dict]]:
        """[Q, D] -> per query [{id, path, score}] (+ a collection's host, not under hide_paths): in a worker thread."""
        with self._serving_index():  # a local index may be rebuilt with another model while serving: checked
            results = self.index.search(vectors, k, model=self.model)
            digests = self.digests_for([h.id for hits in results for h in hits]) if self.local else {}
        show_host = not self.settings.hide_paths  # a machine's name says where files lie, as their folders do
        return [[{"id": h.id, "path": self.shown_path(h.path), "score": float(h.score),
                  **({"host": h.host} if h.host and show_host else {}),
                  "thumb": thumb_ref(h.id, h.path, digests.get(h.id, ""), self.thumb_key)}
                 for h in hits] for hits in results]

    def vector_of(self, image_id: int | str) -> np.ndarray:
        """[1, D] the stored vector of an indexed image (a search "like" it embeds nothing; call from a worker
        thread); 404 when no image has that id."""
        with self._serving_index():
            if self.local:
                rows = self._query("SELECT vector FROM images WHERE id IN ({})", [image_id])
                found = np.frombuffer(rows[0][0], dtype="<f4").astype(np.float32) if rows else None
            else:
                found = self.index.vectors_of([image_id]).get(image_id)
        if found is None:
            raise ApiError(404, f"no image with id {image_id} in the index (it was removed, or the id is not one "
                           "/v1/search gave)")
        return found[None, :]

    def thumbnail(self, image_id: int | str) -> bytes:
        # Looked up on every call, cached or not: another writer (`polymodal index`, a second server on this
        # index) may have removed the image since its thumbnail was cached, or rebuilt the index (ids start again
        # at 1 there, so the cache is keyed by id and path).
        with self._serving_index():
            path, digest = self._path_of(image_id)
        if path is None:
            raise ApiError(404, f"no image with id {image_id} in the index")
        # opened first, then the open file is checked and decoded: a check of the path before the open let someone
        # who can write in an indexed folder swap the checked file for a link out in between (stop 52)
        with self._open_photo(path, image_id) as f:
            self.check_servable(image_id, path, digest, f)  # on every call: a link may be repointed since cached
            key = (image_id, path, digest)  # a photo edited in place, then indexed again at the same id: a new key
            with self._thumbs_lock:
                if key in self._thumbs:
                    self._thumbs.move_to_end(key)
                    return self._thumbs[key]
            data = self._make_thumbnail(f, image_id)
        with self._thumbs_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > 512:
                self._thumbs.popitem(last=False)
        return data

    def check_servable(self, image_id: int | str, path: str, digest: str, opened: io.BufferedReader) -> None:
        """403 unless the row's file, as `opened` holds it, really lies in the indexed folders (or the uploads): the
        file checked is the one served, whatever the path names by now. Rows store a real folder and
        the file's name (canonical_path), and a scan follows symlinked files: a folder someone sent with
        `holiday.jpg -> /home/me/private/passport.jpg` was indexed, and its thumbnail went to every client. A link is
        followed to a file under its own folder (also: a folder moved after indexing and linked back), under
        DB/uploads, or to a photo the index holds itself (a dataset's train/ of links into its all/);
        `--follow-symlinks` serves any. A folder that became a link after indexing must still hold the indexed bytes
        (`digest`, the row's sha256; a collection has none). (An index whose rows themselves name private paths,
        crafted by someone else, is not stopped: it names its own folders. Serve a colleague's index read-only or
        from a copy, as docs/serving-and-export.md says.)"""
        if self.settings.follow_symlinks:
            return
        real = _opened_path(opened, path)
        if real == path:  # no link on the way (the usual case)
            return
        folder, real_folder = os.path.dirname(path), os.path.realpath(os.path.dirname(path))
        # a link within its own folder; or a folder moved after indexing and linked back (same bytes). A shared or
        # synced folder (git pull, Syncthing) that became a link points wherever its sender chose, at the names
        # they chose (IMG_0001.JPG): its files must still be the ones indexed
        if real is not None and (
            (_under(real, real_folder) and (real_folder == folder or not digest or _sha256_of(opened) == digest))
            or (self.uploads is not None and _under(real, os.path.realpath(self.uploads)))
            or (self.local and self.ids_for([real]))  # the photo it points at is indexed itself (one lookup)
        ):
            return
        if folder not in self._refusals_logged and len(self._refusals_logged) < 1000:
            self._refusals_logged.add(folder)
            # (not "outside the indexed folders": an annexed photo's target is in its repository's .git/annex)
            log.warning("thumbnail of image %s refused: %s is a link to %s, which is not in the link's own folder, "
                        "the uploads or the index's photos (further refusals for links in %s are not logged); serve "
                        "with --follow-symlinks to show such links", image_id, path,
                        real or "a file that changed while it was opened", folder)
        raise ApiError(403, f"image {image_id} is a link to a file outside the indexed folders, whose thumbnail this "
                       "server does not show (its operator can allow it with `polymodal serve --follow-symlinks`)")

    def parse_id(self, text: str) -> int | str:
        """An image id from a URL: an index's integer row id, or a collection's point id (a UUID)."""
        if self.local:
            if not re.fullmatch(r"-?[0-9]{1,30}", text):
                raise ApiError(422, f"image id {text[:40]!r} is not a valid integer; ids come from /v1/search")
            if not 0 <= int(text) < 2**63:  # larger ones can't be SQLite ids
                raise ApiError(404, f"no image with id {text} in the index")
            return int(text)
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise ApiError(422, f"image id {text[:40]!r} is not a point id (a UUID); ids come from /v1/search") from None

    def _path_of(self, image_id: int | str) -> tuple[str | None, str]:
        """(path, sha256 of the row; "" for a collection), or (None, "")."""
        if self.local:
            rows = self._query("SELECT path, sha256 FROM images WHERE id IN ({})", [image_id])
            return rows[0] if rows else (None, "")
        found = self.index.paths_for([image_id]).get(image_id)
        if found is None:
            return None, ""
        path, host = found
        if host not in (None, socket.gethostname()) and not os.path.exists(path):
            where = "another host" if self.settings.hide_paths else f"host {host}"
            raise ApiError(404, f"image {image_id} is on {where}, not on this server; a server there (or one "
                           "that mounts its files) shows its thumbnail")
        return path, ""

    def _open_photo(self, path: str, image_id: int | str) -> io.BufferedReader:
        """The row's file opened for reading (links followed; check_servable then judges what was opened). Not
        blocking: a photo replaced by a named pipe waited for a writer, holding a worker thread for good. Never a
        controlling terminal: a server with none (systemd's, setsid) opening a photo swapped for a link to a terminal
        took it for its own, and the terminal's hangup then ended the server (SIGHUP)."""
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
        not_regular = ApiError(422, f"image {image_id} cannot be read for a thumbnail (not a regular file)")
        try:
            # a device is not even opened (opening some acts: a watchdog arms, a tape rewinds); one swapped in after
            # this stat is still refused below, unread
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise not_regular
            fd = os.open(path, flags)
        except FileNotFoundError:
            again = "re-index its folder" + ("" if self.local else " and push the index again")
            raise ApiError(404, f"image {image_id} is in the index but its file is gone; {again}") from None
        except OSError as exc:
            raise ApiError(422, f"image {image_id} cannot be read for a thumbnail ({exc.__class__.__name__})") from None
        # checked before fdopen, which refuses a folder: its IsADirectoryError was a 500 and left the descriptor open
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a pipe, a device, a folder
            os.close(fd)
            raise not_regular
        return os.fdopen(fd, "rb")

    def _make_thumbnail(self, f: io.BufferedReader, image_id: int | str) -> bytes:
        size = self.settings.thumb_size
        try:
            with open_image(f, size, INDEXED_FORMATS) as img:  # a 200 MP phone photo: drafted, as indexed
                img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
                if img.width * img.height > max(self.settings.max_image_pixels, Image.MAX_IMAGE_PIXELS or 0):
                    raise ApiError(422, f"image {image_id} is {img.width}x{img.height}; too large to thumbnail")
                img = to_rgb(img)  # the pixels the model embedded: first frame, EXIF rotation, 16-bit, alpha on white
                img.thumbnail((size, size))
                out = io.BytesIO()
                img.save(out, "JPEG", quality=85)
                return out.getvalue()
        except ApiError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ApiError(422, f"image {image_id} cannot be read for a thumbnail ({exc.__class__.__name__})") from None

    # -- writing (call from a worker thread) ---------------------------------------------------------------------
    def _waited_too_long(self) -> ApiError:
        # groups run one at a time (each embeds its photos and commits; now and then one rewrites vectors.faiss):
        # the wait is the groups ahead, not one long update
        return ApiError(
            503, f"this index update waited over {self.settings.request_timeout_s:g} s for the updates ahead of "
            "it (uploads and removals run one group at a time); retry later, or send more images per request",
            {"Retry-After": "5"},
        )

    def _read_only(self) -> ApiError:
        if self.local:
            return ApiError(405, f"this server cannot write its index {self.index.db} (a read-only folder or mount), "
                            "so it only searches it; add or remove images with `polymodal index` where the index can "
                            "be written")
        return ApiError(405, f"this server searches {self.index.where()}, which it does not write; add or remove "
                        "images where they are indexed, then push: polymodal index PHOTOS --db DB --qdrant "
                        f"{self.index.location} --collection {self.index.collection}")

    def add_images(self, uploads: list[tuple[str, bytes]]) -> dict:
        """Validated image bytes -> files under DB/uploads/<random batch>/NNN-<client's file name, made safe> ->
        indexed (search results then show a name people recognise, never a path the client chose).

        All or nothing: the index adds the batch in one transaction; if that fails (or the process dies) no row
        points at the files, and a failed call deletes them. Adds queued meanwhile share that transaction (see
        GroupCommit); each gets the reply it would get alone, after the adds queued before it.
        """
        if not self.writable:
            raise self._read_only()
        return self.writes.submit("add", uploads, len(uploads))

    def remove_ids(self, ids: list[int]) -> dict:
        """Drop these ids from the index; files the server uploaded are deleted too, other files are untouched."""
        if not self.writable:
            raise self._read_only()
        return self.writes.submit("remove", ids, len(ids))

    def _write_group(self, kind: str, requests: list) -> list:
        """GroupCommit's run, under the writer lock: one outcome (reply or exception) per request, in order."""
        return self._add_group(requests) if kind == "add" else self._remove_group(requests)

    def _conflict(self, what: str, exc: PolymodalError) -> ApiError:
        """409; with Retry-After when another process holds the index's writer lock, which passes (busy.py)."""
        busy = isinstance(exc, IndexBusy)
        return ApiError(409, f"{what}: {exc}", {"Retry-After": str(self.busy.retry_after())} if busy else None)

    def _add_group(self, requests: list[list[tuple[str, bytes]]]) -> list:
        if not self.index.exists():  # index.update would quietly start a new, empty index in its place
            raise self._gone()
        # the duplicate check and the add under one hold of the index's writer lock: another server of this index
        # adding the same photo between the two added it twice (1 pair in 40 sent to both at once)
        with ExitStack() as held:
            try:
                held.enter_context(self.index.writing())
            except PolymodalError as exc:  # another writer holds it (409 with Retry-After), or it cannot be taken
                raise self._conflict("could not add to the index", exc) from None
            self.busy.taken()
            return self._add_held(requests)

    def _add_held(self, requests: list[list[tuple[str, bytes]]]) -> list:
        # the same bytes already indexed (a second click on Add, a client retrying after a lost answer, a photo the
        # folder index holds), twice in one request or in an earlier request of the group: not added again, each
        # search would show it twice
        digests = [[hashlib.sha256(data).hexdigest() for _, data in uploads] for uploads in requests]
        known = self.ids_for_digests([d for ds in digests for d in ds])
        earlier: dict[str, str] = {}  # digest -> stored path, of the group's requests before this one
        outcomes: list = []
        for uploads, request_digests in zip(requests, digests):
            try:
                outcomes.append(self._stage(uploads, request_digests, known, earlier))
            except Exception as exc:  # noqa: BLE001 - this request's failure (its files could not be written)
                outcomes.append(exc)
        staged = [o for o in outcomes if isinstance(o, _Staged)]
        try:
            failed = self._index_staged(staged) if staged else {}
        except Exception:
            if len(requests) == 1:
                raise
            # unexpected (the model failed on one request's photo): each request again alone, in order, so that only
            # the one that causes it fails, and the others get the replies they got alone (a copy of that request's
            # photo in a later one is added by the later one, not skipped as "sent just before")
            return [self._add_alone(uploads) for uploads in requests]
        ids = self.ids_for([p for st in staged for p in st.names])
        count = self.count()
        return [o if not isinstance(o, _Staged) else failed[id(o)] if id(o) in failed
                else o.reply(ids, count, self.thumb_key) for o in outcomes]

    def _add_alone(self, uploads: list[tuple[str, bytes]]) -> Any:
        try:
            return self._add_group([uploads])[0]
        except Exception as exc:  # noqa: BLE001 - this request's outcome
            return exc

    def _stage(self, uploads: list[tuple[str, bytes]], digests: list[str], known: dict[str, int],
               earlier: dict[str, str]) -> "_Staged":
        """One add request's new images written (fsynced) to their own batch folder; its duplicates noted."""
        fresh, duplicates, seen = [], [], {}
        for (name, data), digest in zip(uploads, digests):
            if digest in known or digest in seen:
                same = f"id {known[digest]}" if digest in known else f"upload {seen[digest]!r} of this request"
                duplicates.append({"upload": name, "reason": f"the same image is already in the index ({same})",
                                   **({"id": known[digest]} if digest in known else {"_same": digest})})
            elif digest in earlier:  # added by a request queued before this one: its id is known once committed
                duplicates.append({"upload": name, "_earlier": earlier[digest]})
            else:
                seen[digest] = name
                fresh.append((name, data, digest))
        staged = _Staged(None, {}, {}, duplicates)
        if not fresh:
            return staged
        staged.batch = batch = self.uploads / uuid.uuid4().hex
        batch.mkdir(parents=True)
        try:
            for n, (name, data, digest) in enumerate(fresh):
                path = batch / f"{n:03d}-{_safe_stem(name)}{image_suffix(data)}"
                with open(path, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                staged.names[canonical_path(path)] = name
                staged.digest_of[canonical_path(path)] = digest
        except BaseException:
            shutil.rmtree(batch, ignore_errors=True)
            raise
        for path, digest in staged.digest_of.items():
            earlier[digest] = path
        return staged

    def _index_staged(self, staged: list["_Staged"]) -> dict[int, BaseException]:
        """Index the staged requests' batch folders in one transaction (one commit, one catch-up of the cache).
        -> {id(staged): exception} for those that failed on the index's state (gone, busy, another model: the same
        for every request); their files are deleted. Any other failure deletes them too, and is raised."""
        batches = [st.batch for st in staged if st.batch is not None]
        if not batches:
            return {}
        try:
            try:
                with self._serving_index():  # rebuilt with another model meanwhile: 503, as searches get
                    report = self.index.update_folders(batches, BatchedModel(self.model, self.batcher), progress=False,
                                                       commit_every_s=None)  # one transaction: all or nothing
            except (ApiError, IndexDamaged):
                raise
            except PolymodalError as exc:
                raise self._conflict("could not add to the index", exc) from None
        except BaseException as exc:
            for batch in batches:
                shutil.rmtree(batch, ignore_errors=True)
            if not isinstance(exc, ApiError):
                raise
            return {id(st): exc for st in staged if st.batch is not None}
        for path, reason in report.skipped:  # already validated, so unexpected; keep no file without a row
            for st in staged:
                if path in st.names:
                    why = self.hide(reason.replace(str(st.batch), "<upload>"))
                    st.skipped.append({"upload": st.names[path], "reason": why})
            Path(path).unlink(missing_ok=True)
        return {}

    def _remove_group(self, requests: list[list[int]]) -> list:
        try:
            with self._serving_index():
                # the rows actually dropped, so no reply claims more; an id named by two requests is the first's
                paths = self.index.remove_ids([i for ids in requests for i in ids])
        except (ApiError, IndexDamaged):  # the index is gone (503), or damaged (the app's 503, logged once): no 409
            raise
        except PolymodalError as exc:
            raise self._conflict("could not remove from the index", exc) from None
        self.busy.taken()
        for path in paths.values():
            if self._own_batch(Path(path).parent) and Path(path).name != "..":
                Path(path).unlink(missing_ok=True)
                try:
                    Path(path).parent.rmdir()  # the batch folder, once empty
                except OSError:
                    pass
        with self._thumbs_lock:
            for key in [key for key in self._thumbs if (key[0], key[1]) in paths.items()]:
                self._thumbs.pop(key, None)
        count, claimed, replies = self.count(), set(), []
        for ids in requests:
            mine = {i for i in ids if i in paths and i not in claimed}
            claimed |= mine
            replies.append({"removed": sorted(mine), "not_found": [i for i in ids if i not in mine], "count": count})
        return replies

    def _own_batch(self, folder: Path) -> bool:
        """Whether `folder` is a batch folder this server writes uploads to: named as _stage names them, right under
        DB/uploads, no symlink or `..` on the way. Only those are deleted: an index folder from someone else (a tar
        or zip keeps symlinks) may hold an uploads/ linking to `..`, or rows naming any path, and the cleanup at
        start, or a removal, deleted the user's own folders and files through them."""
        return (folder.parent == self.uploads and BATCH_NAME.fullmatch(folder.name) is not None
                and os.path.realpath(folder) == str(folder))

    def clean_orphan_uploads(self) -> int:
        """Delete upload batches that no index row points at (left by an add that crashed), once they are old."""
        if not self.uploads.is_dir():
            return 0
        removed = 0
        with self._write_lock:
            for batch in self.uploads.iterdir():
                if (not self._own_batch(batch) or not batch.is_dir()
                        or time.time() - batch.stat().st_mtime < ORPHAN_AGE_S):
                    continue
                files = [canonical_path(p) for p in batch.iterdir()]
                if files and self.ids_for(files):
                    continue
                shutil.rmtree(batch, ignore_errors=True)
                removed += 1
        if removed:
            log.info("deleted %d orphan upload batches under %s", removed, self.uploads)
        return removed


def _places_of(index: ImageIndex | QdrantCollection) -> list[tuple[str, str]]:
    """(place, placeholder) pairs Service.hide replaces, longest first: the index folder, or a collection's URL or
    local-mode folder, as written (unless relative: "q" would turn up in any word) and absolute (messages name
    either)."""
    if isinstance(index, ImageIndex):
        return [(str(index.db), "<index>")]  # (resolved: rows and messages name it so)
    location, places = index.location, set()
    if index.remote or os.path.isabs(location):
        places.add(location)
    if not index.remote:
        folder = os.path.expanduser(location)
        places |= {os.path.abspath(folder), os.path.realpath(folder)}
    return [(p, "<qdrant>") for p in sorted(places, key=len, reverse=True) if p != os.sep]


def _opened_path(f: io.BufferedReader, path: str) -> str | None:
    """The real path of the file `f` holds open, links resolved: on Linux the kernel's name for its descriptor (exact,
    however the path changes meanwhile); elsewhere `path` resolved after the open, if that is still the opened file.
    None when it is not (the file was swapped while being opened)."""
    try:
        real = os.readlink(f"/proc/self/fd/{f.fileno()}")
        if os.path.isabs(real):  # (a photo deleted since it was opened: "PATH (deleted)", still under its folder)
            return real
    except OSError:  # no /proc (macOS, Windows)
        pass
    real = os.path.realpath(path)
    try:
        return real if os.path.samestat(os.stat(real), os.fstat(f.fileno())) else None
    except OSError:
        return None


def _sha256_of(f: io.BufferedReader) -> str:
    """file_sha256 of an open file (read from its start; left at its start for the decoder)."""
    f.seek(0)
    digest = stream_sha256(f)
    f.seek(0)
    return digest


def _under(path: str, folder: str) -> bool:
    """Whether real path `path` lies inside real folder `folder`."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _safe_stem(name: str) -> str:
    """A client's file name as a plain file-name stem: letters, digits, _ and - only (no folders or dots), at most
    60 characters."""
    stem = re.sub(r"[^\w-]+", "_", Path(str(name).replace("\\", "/")).stem).strip("_")
    return stem[:60] or "image"


@dataclass
class _Staged:
    """One add request of a group, its files written: `names` stored path -> client's name, `digest_of` stored path
    -> sha256, `duplicates` the reply's entries for uploads not added (some resolved once the group is committed)."""

    batch: Path | None
    names: dict[str, str]
    digest_of: dict[str, str]
    duplicates: list[dict]
    skipped: list[dict] = field(default_factory=list)  # files the index skipped (unexpected: validated already)

    def reply(self, ids: dict[str, int], count: int, key: bytes = b"") -> dict:
        added = [{"id": ids[p], "upload": self.names[p], "thumb": thumb_ref(ids[p], p, self.digest_of[p], key)}
                 for p in self.names if p in ids]
        by_digest = {self.digest_of[p]: ids[p] for p in self.names if p in ids}
        for entry in self.duplicates:
            same = entry.pop("_same", None)  # a second copy in this request: the id its first copy got
            if same in by_digest:
                entry["id"] = by_digest[same]
            path = entry.pop("_earlier", None)  # a copy of an earlier request's upload: that one's id, or its fate
            if path is not None:
                entry["reason"] = (f"the same image is already in the index (id {ids[path]})" if path in ids else
                                   "the same image was sent by another request just before, and could not be added")
                if path in ids:
                    entry["id"] = ids[path]
        return {"added": added, "skipped": self.duplicates + self.skipped, "count": count}


def vqa_fields(answer: Any) -> dict:
    """A VQA model's answer() as the reply's fields, shaped as `polymodal vqa --json` prints them: "answer", "score" and
    "alternatives" as [{"answer", "score"}, ...] (the objects /v1/classify sends for labels). Another model's answer
    (a string, a dict of its own) is sent as it is, under "answer"."""
    alternatives = answer.get("alternatives") if isinstance(answer, dict) else None
    if not (isinstance(answer, dict) and isinstance(answer.get("answer"), str) and isinstance(alternatives, (list, tuple))
            and all(isinstance(a, (list, tuple)) and len(a) == 2 for a in alternatives)):
        return {"answer": jsonable(answer)}
    return {**jsonable(answer), "alternatives": [{"answer": jsonable(a), "score": jsonable(s)} for a, s in alternatives]}


def jsonable(value: Any) -> Any:
    """A model's answer (str, numbers, numpy, tuples, dataclasses...) -> plain JSON values."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return jsonable(asdict(value))
    return str(value)
