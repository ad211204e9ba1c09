"""The server's log lines: each request's id (X-Request-ID), a time on every line, `serve --log-format json`.

uvicorn's own format has neither a time nor a request: in `docker logs` or a `> serve.log` an error line could not
be placed in time, nor matched with its access line or with what the client saw. Here every request gets an id
(the client's X-Request-ID when it is a safe one, else a new one), answered in the X-Request-ID header and put in
each log line written while the request runs (RequestFields; `%(request_id)s` in a format of your own).

    2025-06-01T10:00:00.123+02:00 INFO [1f0c...] 127.0.0.1:52144 - "GET /v1/thumb/3 HTTP/1.1" 200
    {"time": "2025-06-01T10:00:00.123+02:00", "level": "INFO", "logger": "uvicorn.access", "message": "...",
     "request_id": "1f0c...", "method": "GET", "path": "/v1/thumb/3", "status": 200, "duration_ms": 4.1}

journald stamps each line itself: where systemd connects stderr to the journal (JOURNAL_STREAM names it), text
lines leave the time out, as `journalctl` shows one anyway.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

FORMATS = ("text", "json")
# a client's X-Request-ID is kept when it is short and prints safely (a UUID, nginx's $request_id, AWS's and Google's
# trace headers); any other is replaced, not refused: a tracing header never fails its request
_GOOD_ID = re.compile(rb"[A-Za-z0-9._~:;/+=@-]{1,128}")
# what would start a line (or move the cursor, clear a terminal) in the middle of one
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass
class RequestInfo:
    id: str
    method: str
    path: str
    start: float  # time.perf_counter()
    status: int | None = None  # once the answer started


CURRENT: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("polymodal_request", default=None)


def request_path(scope) -> str:
    """The request's path for a log line: as sent, percent-encoded (as uvicorn's access line shows it), never
    scope["path"], which is decoded: a %0A in it started a forged line of its own."""
    raw = scope.get("raw_path")
    return quote(raw.decode("latin-1") if raw else scope["path"], safe="/%:@!$&'()*+,;=~")


def request_id() -> str | None:
    """The running request's id (None outside a request)."""
    info = CURRENT.get()
    return info.id if info else None


class RequestIdMiddleware:
    """Gives each HTTP request its id, answers it in X-Request-ID (every answer, a 500 included: create_app puts this
    outside Starlette's error middleware) and holds it in CURRENT while the request runs."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope.get("headers", ()) if k.lower() == b"x-request-id"), b"")
        info = RequestInfo(given.decode() if _GOOD_ID.fullmatch(given) else uuid.uuid4().hex, scope["method"],
                           request_path(scope), time.perf_counter())

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]  # before send: uvicorn writes its access line inside it
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", info.id.encode())]}
            await send(message)

        token = CURRENT.set(info)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            CURRENT.reset(token)


class RequestFields(logging.Filter):
    """Gives each record the running request's fields: request_id ("-" outside a request) and, for the formatters
    here, `request` (its RequestInfo) and duration_ms once its answer started (on uvicorn's access line: the time
    to the answer's headers, the whole time for a JSON answer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = CURRENT.get()
        record.request_id = info.id if info else "-"
        record.request = info
        if info is not None and info.status is not None:
            record.duration_ms = round((time.perf_counter() - info.start) * 1000, 1)
        return True


def _time(record: logging.LogRecord) -> str:
    # ISO 8601, local time with its offset (as gunicorn's), to the millisecond
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL [REQUEST_ID] message`, the message on one line (control characters escaped: what a client sent
    cannot start a line of its own); a traceback follows on its own lines, as usual."""

    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def formatMessage(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", "-")
        head = ([_time(record)] if self.timestamps else []) + [record.levelname] + ([f"[{rid}]"] if rid != "-" else [])
        return " ".join(head + [_escaped(record.message)])


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and in a request request_id, method, path, and
    status and duration_ms once it is answered; a traceback as `traceback`."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _time(record), "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        info = getattr(record, "request", None)
        if info is not None:
            out.update(request_id=info.id, method=info.method, path=info.path)
            if info.status is not None:
                out.update(status=info.status, duration_ms=getattr(record, "duration_ms", None))
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out)


class _Handler(logging.StreamHandler):
    """A handler `configure` added (and replaces when called again)."""


def _journal(stream) -> bool:
    """Whether `stream` is systemd's journal (systemd.exec: JOURNAL_STREAM is "DEVICE:INODE" of that connection)."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def _handler(stream, fmt: str) -> logging.Handler:
    handler = _Handler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(timestamps=not _journal(stream)))
    handler.addFilter(RequestFields())
    return handler


def configure(fmt: str = "text") -> None:
    """`polymodal serve`'s logging in `fmt` (FORMATS), where the CLI's basicConfig set it up: the root logger writes
    to stderr, uvicorn's access log to stdout (as uvicorn's own configuration does); uvicorn.Config then needs
    log_config=None to keep it. A program that set up logging itself (a test capturing it) keeps its handlers."""
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    plain = [h for h in root.handlers if type(h) is logging.StreamHandler or isinstance(h, _Handler)]
    if root.handlers and not plain:
        return
    for old in plain:
        root.removeHandler(old)
    # uvicorn's own configuration (a server run earlier in this process with it) gives "uvicorn" and its access log
    # handlers of their own and stops them propagating: their lines skipped this format, or came twice
    uvicorn = logging.getLogger("uvicorn")
    for logger in (uvicorn, access):
        for old in list(logger.handlers):
            logger.removeHandler(old)
    uvicorn.propagate = True
    root.addHandler(_handler(sys.stderr, fmt))
    access.addHandler(_handler(sys.stdout, fmt))
    access.propagate = False
