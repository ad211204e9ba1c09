"""Retry-After for a write refused because another process holds the index's writer lock (a 409).

Another server's upload holds the lock 0.1 s (1 photo) to 1.7 s (measured), but `polymodal index` holds it for its
whole sync, minutes on a large folder: with Retry-After 1 throughout, a client retried every second for all of it.
The server cannot see how long the holder will take, so it says to wait half as long as it has seen the lock held,
up to MAX_S: a client then retries 1, 1, 1, 2, 3, 4, 6, 9, 14 s apart over a 40 s hold (9 tries, not 36) and gets
the lock at most half the hold (and MAX_S) after it is freed. A write that gets the lock ends the streak.
"""

from __future__ import annotations

import time

MAX_S = 15  # the longest wait: a client may come back this long after the hold ended
GRACE_S = 5  # a refused client back within its Retry-After and this finds the same hold; later, a new one


class BusyWriter:
    """Called under the service's write lock (GroupCommit runs one group at a time): no lock of its own."""

    def __init__(self) -> None:
        self._since: float | None = None  # the first refusal of this hold
        self._until = 0.0  # a refusal after this is of another hold

    def retry_after(self) -> int:
        """The seconds a client refused now should wait."""
        now = time.monotonic()
        if self._since is None or now > self._until:
            self._since = now
        wait = min(MAX_S, max(1, round((now - self._since) / 2)))
        self._until = now + wait + GRACE_S
        return wait

    def taken(self) -> None:
        """This server got the lock: the hold is over."""
        self._since = None
