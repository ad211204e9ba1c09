"""Group commit: index updates that wait for the writer are written together.

Updates of a local index run one at a time, and each used to read and rewrite vectors.faiss whole (about 0.5 s at
100k images, 3 s at 1M; since stop 47 that happens only once the index's delta passes 5%, see index/delta.py), so
under a burst of single-image uploads each one waited for every update ahead of it (8 at once at 100k: the last
answered after 14 s; 32 at once: a 503 past --timeout). Now a request queues its update; the request that gets the
writer takes every update queued by then (of one kind, in order, up to `max_items` items) and runs them as one, then
hands each request its own outcome. N queued uploads pay one SQLite commit (and at most one rewrite).

No thread of its own: the writing is done by one of the waiting request threads (the "leader"), so a server
draining on SIGTERM just finishes its in-flight requests, as before.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

QUEUED, TAKEN, DONE = "queued", "taken", "done"


@dataclass(eq=False)  # compared by identity: list.remove must find this job, not an equal one
class _Write:
    kind: str
    payload: Any
    size: int
    state: str = QUEUED
    outcome: Any = None  # the result, or the exception to raise in the request's thread

    def result(self) -> Any:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class GroupCommit:
    """submit(kind, payload, size) -> this payload's result from run(kind, [payloads...]).

    run(kind, payloads) returns one outcome per payload, a result or an exception instance (one request's failure
    is not the others'); if it raises, every payload of the group gets that exception. `lock` is held while a group
    runs (others may take it too: the service's startup cleanup). A request whose group has not started within
    `timeout_s` leaves the queue and raises timeout_error(); once its group started, it waits for it to finish: an
    index write is never cut off half-way.
    """

    def __init__(self, lock: threading.Lock, run: Callable[[str, list], list], max_items: int, timeout_s: float,
                 timeout_error: Callable[[], BaseException]) -> None:
        self.lock, self.run, self.max_items = lock, run, int(max_items)
        self.timeout_s, self.timeout_error = float(timeout_s), timeout_error
        self.groups = 0  # groups run (each one index commit)
        self._cond = threading.Condition()  # guards _queue, _leading and the jobs' state
        self._queue: list[_Write] = []
        self._leading = False  # a request is running groups (or waiting for `lock` to do so)

    def submit(self, kind: str, payload: Any, size: int) -> Any:
        job = _Write(kind, payload, max(int(size), 1))
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            self._queue.append(job)
            while job.state != DONE and (job.state == TAKEN or self._leading):
                left = deadline - time.monotonic()
                if job.state == QUEUED and left <= 0:
                    self._queue.remove(job)
                    raise self.timeout_error()
                self._cond.wait(left if job.state == QUEUED else None)
            if job.state == DONE:  # written by another request's group
                return job.result()
            self._leading = True
        try:
            if not self.lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
                with self._cond:
                    self._queue.remove(job)  # still queued: only a leader takes jobs
                raise self.timeout_error()
            try:
                while job.state != DONE:  # FIFO: the groups ahead of this request's first, if more were queued
                    self._run_group()
            finally:
                self.lock.release()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()  # a queued request takes over
        return job.result()

    def _run_group(self) -> None:
        with self._cond:
            group, items = [], 0
            for job in self._queue:  # the head, and what follows it of the same kind, up to max_items
                if job.kind != self._queue[0].kind or (group and items + job.size > self.max_items):
                    break
                group.append(job)
                items += job.size
            del self._queue[: len(group)]
            for job in group:
                job.state = TAKEN
        try:
            outcomes = list(self.run(group[0].kind, [job.payload for job in group]))
            if len(outcomes) != len(group):  # a job left unresolved would wait for ever
                raise RuntimeError(f"group commit: {len(outcomes)} outcomes for {len(group)} updates")
        except BaseException as exc:  # noqa: BLE001 - handed to every request of the group, raised in its thread
            outcomes = [exc] * len(group)
        with self._cond:
            self.groups += 1
            for job, outcome in zip(group, outcomes):
                job.outcome, job.state = outcome, DONE
            self._cond.notify_all()
