"""A micro-batcher: concurrent embedding requests are merged into one forward pass on one worker thread.

Every model call of the service goes through the one worker thread, so the event loop is never blocked and the
model is never used from two threads at once. Jobs are queued; the worker takes the first one and, when batching is
on, keeps taking jobs of the same kind (images or texts) until the batch holds `max_batch` items or `max_wait_ms`
has passed since it started waiting (jobs of the other kind are looked past and run next, in order). Jobs that are
already queued when the wait ends still join (up to `max_batch`), so under load batches fill without any waiting at
all. It waits only while another request of its kind is on its way (being decoded: see `incoming()`); a lone
request runs at once instead of paying max_wait_ms.

    batcher = MicroBatcher(model, max_batch=32, max_wait_ms=5)
    vectors = batcher.submit_images([pil_image]).result()     # from any thread; or `await batcher.images([...])`
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.models.inputs import as_images

log = logging.getLogger(__name__)

_STOP = object()
_WAKE = object()  # a request a batch was waiting for failed before submitting: stop waiting for it
LOOKAHEAD = 64  # jobs of another kind a batch looks past for more of its own


@dataclass
class _Job:
    kind: str  # "image" | "text" | "call"
    items: list = field(default_factory=list)
    fn: Callable | None = None
    args: tuple = ()
    future: Future = field(default_factory=Future)


def spans(n: int, step: int) -> list[tuple[int, int]]:
    """[start, end) of each pass over n items, step at a time."""
    return [(start, min(start + step, n)) for start in range(0, n, step)]


class MicroBatcher:
    """Runs model work on one thread; merges concurrent `image` and `text` jobs when `enabled`.

    on_batch(kind, items, requests) is called after each forward pass (for metrics).
    """

    def __init__(
        self,
        model,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        enabled: bool = True,
        on_batch: Callable[[str, int, int], None] | None = None,
        image_forward: Callable[[list], np.ndarray] | None = None,
    ) -> None:
        if max_batch < 1 or not 0 <= max_wait_ms < math.inf:  # nan or inf would kill the model thread
            raise PolymodalError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.model = model
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.enabled = bool(enabled)
        self.on_batch = on_batch
        # items of an "image" job -> [N, dim]; default model.encode_image (items: paths, PIL images, arrays)
        self.image_forward = image_forward or (lambda items: model.encode_image(items, batch_size=max(len(items), 1)))
        self.forward_calls = 0  # model forward passes run (image + text)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._carry: deque = deque()  # a job taken while filling a batch that belongs to the next one
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stop_queued = False  # one stop in the queue at most: two would put each other back for ever
        self._incoming = {"image": 0, "text": 0}  # requests preprocessing their inputs, about to submit, by kind
        self._incoming_lock = threading.Lock()

    @contextmanager
    def incoming(self, kind: str | None = None):
        """Wrap a request's preprocessing (decode, resize): while any is running, a batch waits for it to join.
        `kind` ("image" or "text"): what it will submit; only a batch of that kind waits (it could never join the
        other); None: either."""
        kinds = list(self._incoming) if kind is None else [kind]
        with self._incoming_lock:
            for k in kinds:
                self._incoming[k] += 1
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            with self._incoming_lock:
                for k in kinds:
                    self._incoming[k] -= 1
            if failed:  # (a bad image): a batch waiting for it would otherwise wait out max_wait_ms for nothing
                self._queue.put(_WAKE)

    # -- submitting (any thread) ------------------------------------------------------------------------------
    def submit_images(self, images: list) -> Future:
        """Images as image_forward takes them (by default PIL images / arrays) -> Future of float32 [N, dim]."""
        return self._submit(_Job("image", list(images)))

    def submit_texts(self, texts: list[str]) -> Future:
        return self._submit(_Job("text", list(texts)))

    def submit_call(self, fn: Callable, *args) -> Future:
        """Any other model work (classification labels, VQA, index updates), run alone on the worker thread."""
        return self._submit(_Job("call", fn=fn, args=args))

    async def images(self, images: list) -> np.ndarray:
        return await asyncio.wrap_future(self.submit_images(images))

    async def texts(self, texts: list[str]) -> np.ndarray:
        return await asyncio.wrap_future(self.submit_texts(texts))

    async def call(self, fn: Callable, *args) -> Any:
        return await asyncio.wrap_future(self.submit_call(fn, *args))

    def pending(self) -> int:
        """Jobs waiting to run (approximate)."""
        return self._queue.qsize() + len(self._carry)

    def _submit(self, job: _Job) -> Future:
        with self._start_lock:  # atomic with the worker's "nothing queued: stop" check (see _stopping)
            self._start_locked()
            self._queue.put(job)
        return job.future

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._start_lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="polymodal-model", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued work, then stop the worker thread.

        Work submitted while closing (an index add still running at shutdown) is done by the same thread before it
        stops: there is never a second model thread.
        """
        with self._start_lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                return
            if not self._stop_queued:  # a second close() waits for the same stop
                self._queue.put(_STOP)
                self._stop_queued = True
        thread.join(timeout)

    def _stopping(self) -> bool:
        """On a stop: end the thread, or, when work came after the stop (its submit saw this thread alive), queue
        the stop again behind that work."""
        with self._start_lock:
            if self._carry or not self._queue.empty():  # (the one stop was just taken: what is queued is work)
                self._queue.put(_STOP)
                return False
            self._thread, self._stop_queued = None, False
            return True

    # -- the worker thread -----------------------------------------------------------------------------------
    def _next(self, timeout: float | None):
        if self._carry:
            return self._carry.popleft()
        if timeout is None:
            return self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _run(self) -> None:
        while True:
            job = self._next(None)
            if job is _WAKE:
                continue
            if job is _STOP:
                if self._stopping():
                    return
                continue
            if not job.future.set_running_or_notify_cancel():
                continue  # its request timed out or went away while queued
            if job.kind == "call":
                self._run_call(job)
                continue
            batch, size = [job], len(job.items)
            if self.enabled:
                deadline = time.monotonic() + self.max_wait
                # jobs of another kind are set aside, not an end to the batch: under mixed traffic (text searches
                # between image uploads) the queue alternates kinds, and stopping at the first one made every
                # batch a single request. They go back in front of the queue, in order, and run next.
                others: list = []
                while size < self.max_batch:
                    try:
                        # nothing on its way: take what is queued, don't wait
                        nxt = self._next(deadline - time.monotonic() if self._incoming[job.kind] else 0)
                    except queue.Empty:
                        break
                    if nxt is _WAKE:  # look again: wait on only if another request is still on its way
                        continue
                    if nxt is not _STOP and nxt.kind != job.kind:
                        others.append(nxt)
                        if len(others) < LOOKAHEAD:  # (a long backlog is not scanned for every batch)
                            continue
                        break
                    if nxt is _STOP or size + len(nxt.items) > self.max_batch:
                        others.append(nxt)
                        break
                    if nxt.future.set_running_or_notify_cancel():
                        batch.append(nxt)
                        size += len(nxt.items)
                # (what was taken from the carry came off its front, so the set-aside jobs go back there)
                self._carry.extendleft(reversed(others))
            self._run_batch(job.kind, batch)

    def _forward(self, kind: str, items: list) -> np.ndarray:
        self.forward_calls += 1
        if kind == "image":
            return self.image_forward(items)
        return self.model.encode_text(items, batch_size=max(len(items), 1))

    def _passes(self, kind: str, items: list) -> list[tuple[int, int]]:
        """[start, end) of each forward pass over `items`: images max_batch at a time (one request may hold more:
        up to 64), texts in one pass (the app sends them in chunks of its own)."""
        return spans(len(items), self.max_batch if kind == "image" else max(len(items), 1)) or [(0, 0)]

    def _forward_passes(self, kind: str, items: list) -> tuple[np.ndarray, list[tuple[int, int]]]:
        passes = self._passes(kind, items)
        return np.concatenate([self._forward(kind, items[a:b]) for a, b in passes]), passes

    def _run_batch(self, kind: str, batch: list[_Job]) -> None:
        items = [x for job in batch for x in job.items]
        try:
            vectors, passes = self._forward_passes(kind, items)
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting requests
            if len(batch) > 1:  # one bad request must not fail the others: retry each alone
                for job in batch:
                    self._run_alone(kind, job)
                return
            batch[0].future.set_exception(exc)
            return
        spans, start = [], 0  # each job's [start, end) in items
        for job in batch:
            spans.append((start, start + len(job.items)))
            start += len(job.items)
        for a, b in passes:  # each pass as it ran, with the number of requests it held a part of
            self._report(kind, b - a, sum(1 for s, e in spans if s < b and a < e) or 1)
        for job, (s, e) in zip(batch, spans):
            job.future.set_result(vectors[s:e])

    def _run_alone(self, kind: str, job: _Job) -> None:
        try:
            result, passes = self._forward_passes(kind, job.items)
        except BaseException as exc:  # noqa: BLE001
            job.future.set_exception(exc)
            return
        for a, b in passes:
            self._report(kind, b - a, 1)
        job.future.set_result(result)

    def _run_call(self, job: _Job) -> None:
        try:
            job.future.set_result(job.fn(*job.args))
        except BaseException as exc:  # noqa: BLE001
            job.future.set_exception(exc)

    def _report(self, kind: str, items: int, requests: int) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(kind, items, requests)
            except Exception:  # noqa: BLE001 - metrics must never break serving
                log.exception("batch metrics callback failed")


class BatchedModel:
    """A stand-in for the model whose encode_image runs on the batcher's thread: for ImageIndex.update, so index
    adds share the one model thread with the requests instead of calling the model from a second thread."""

    def __init__(self, model, batcher: MicroBatcher) -> None:
        self._model, self._batcher = model, batcher
        self.name, self.version, self.dim, self.key = model.name, model.version, model.dim, model.key

    def encode_image(self, images, batch_size: int | None = None) -> np.ndarray:
        images = as_images(images)  # (one path or several, as encode_image takes them)
        vectors = self._batcher.submit_call(self._model.encode_image, images, batch_size).result()
        # counted in the batch metrics as kind "index" (not "image": a request batch): encode_image runs batch_size
        # images a pass
        step = batch_size or getattr(self._model, "image_batch_size", None) or max(len(images), 1)
        for start, end in spans(len(images), step):
            self._batcher._report("index", end - start, 1)
        return vectors

    def encode_text(self, texts, batch_size: int | None = None) -> np.ndarray:
        return self._batcher.submit_call(self._model.encode_text, texts, batch_size).result()
