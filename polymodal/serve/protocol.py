"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request's headers, and one for answers at a stop.

uvicorn times out neither a connection that sends nothing nor one that sends its headers a byte at a time: its
keep-alive timer runs only between requests, and every byte received stops it (uvicorn issue #157 lists a
request-start timeout as not done). Under `serve --max-connections` a few hundred such connections would then hold
every slot for ever, and every other client get 503s. Here a request's headers must arrive within `timeout_s` of the
connection opening, or of the request's first byte on a kept-alive connection; else the connection is closed. The
body has `--timeout` (LimitsMiddleware, 408).

At a stop (SIGTERM, Ctrl-C) uvicorn waits for every connection to finish sending its answer, without a limit: a
client that stopped reading (its answers filling the socket buffers) held the process until systemd's SIGKILL, 90 s
later. From `drain_s` after the stop, a connection with answer bytes the client is not taking is cut; one whose
request is still running (an index write, which has no deadline once started) is still waited for.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0


def header_deadline_protocol(timeout_s: float | None = None, drain_s: float | None = None):
    """uvicorn's H11Protocol, closing a connection whose request headers take over `timeout_s` (HEADER_TIMEOUT_S)
    to arrive, and at a stop, from `drain_s` after it (None: never), one whose client does not take its answer, for
    uvicorn.Config(http=...) (uvicorn is imported here: the serve extra stays optional)."""
    timeout_s = HEADER_TIMEOUT_S if timeout_s is None else timeout_s
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11(H11Protocol):
        _deadline = None  # the asyncio timer, while a request's headers are awaited
        unsupported = False  # this uvicorn's H11Protocol lacks what the deadline reads: plain h11 from then on

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._guarded(self._arm)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._guarded(self._watch)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def shutdown(self) -> None:  # the server stops: an idle connection closes now, a busy one after its answer
            super().shutdown()
            if drain_s is not None:
                self._guarded(lambda: self.loop.call_later(drain_s, self._guarded, self._cut_if_stuck))

        def _cut_if_stuck(self) -> None:
            if self.transport.get_write_buffer_size():  # answer bytes the client is not taking
                log.info("closed a connection from %s at shutdown: its client did not read its answer",
                         self.client[0] if self.client else "?")
                self.transport.abort()
            elif not self.transport.is_closing():  # its request still runs: look again
                self.loop.call_later(1.0, self._guarded, self._cut_if_stuck)

        def _watch(self) -> None:
            if self.conn.their_state is h11.IDLE:  # the request's headers are not all here yet
                if self._deadline is None and not self.transport.is_closing():
                    self._arm()
            else:
                self._disarm()

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(timeout_s, self._guarded, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closed a connection from %s: its request headers did not arrive within %g s",
                         self.client[0] if self.client else "?", timeout_s)
                self.transport.close()

        def _guarded(self, step) -> None:
            # conn, loop, transport, client: H11Protocol's own (uvicorn 0.29 to 0.55; pyproject has no upper bound).
            # A uvicorn that renamed one made every connection fail (conn: each request dropped unanswered): serve
            # without the deadline instead, and say so once
            if HeaderDeadlineH11.unsupported:
                return
            try:
                step()
            except AttributeError as exc:
                HeaderDeadlineH11.unsupported = True
                self._disarm()
                log.warning("serving without a deadline for request headers: this uvicorn's H11Protocol changed (%s)",
                            exc)

    return HeaderDeadlineH11
