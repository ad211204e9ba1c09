"""Pure-ASGI layers around the app, outermost first: metrics, API key, body size + request timeout.

Pure ASGI (no BaseHTTPMiddleware) so a request rejected here never reaches the router, the body is read once, and
a 50 MB upload is refused from its Content-Length without reading it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from polymodal.serve.hosts import allowed_name, host_allowed, hostname_of
from polymodal.serve.logs import request_path

log = logging.getLogger(__name__)

# a client's made-up methods count as "other": each would be a new metrics series, counted before the API key check
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # read only: other sites' pages may load thumbnails
# Starlette's TestClient calls the server "testserver": a user testing a keyless create_app meets the Host check first
TEST_CLIENT_HINT = "; in tests, TestClient(app, base_url=\"http://localhost\")"
CLIENT_CLOSED = 499  # the status metrics count a request under when its client left before it was answered


async def send_error(send, status: int, message: str, headers: dict | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def route_path(scope) -> str:
    """The path the app routes on: uvicorn puts --root-path in front of scope["path"] (a proxy stripped it), so
    "/photos/healthz" is "/healthz" here, as Starlette's router sees it."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


class MetricsMiddleware:
    """Counts every response by route template (not raw path: ids would explode the label set) and status."""

    def __init__(self, app, metrics, routes_of) -> None:
        self.app, self.metrics, self.routes_of = app, metrics, routes_of

    def _endpoint(self, scope) -> str:
        from starlette.routing import Match

        partial = None
        for route in self.routes_of.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "unmatched")
            if match == Match.PARTIAL and partial is None:  # the path matched, the method did not (-> 405)
                partial = getattr(route, "path", None)
        return partial or "unmatched"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, answered = time.perf_counter(), 500, False
        endpoint = self._endpoint(scope)

        async def send_status(message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_status)
            if status == 500 and not answered:  # no answer and no error: the client went away first (nginx's 499),
                status = CLIENT_CLOSED              # not a server error for an error-rate alert
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.observe_request(endpoint, method, status, time.perf_counter() - start)


PROBES = ("/healthz", "/readyz")  # a load balancer's or orchestrator's probes: open, any Host


class ApiKeyMiddleware:
    """With a key set, every request except the open paths needs `X-API-Key: KEY` or `Authorization: Bearer KEY`
    (compared in constant time)."""

    def __init__(self, app, api_key: str | None, open_paths: tuple = ("/healthz",), allowed_hosts=()) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.open_paths = set(open_paths)
        self.allowed_hosts = frozenset(allowed_name(h) for h in allowed_hosts)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.key is None:
            host = _header(scope, b"host")
            # /healthz and /readyz hold nothing to read: a probe by a service or container name needs no --allow-host
            if route_path(scope) not in PROBES and not host_allowed(host, self.allowed_hosts):  # a rebound name
                name = hostname_of(host)[:80]
                return await send_error(send, 403, f"request for host {name!r} refused: a server without --api-key "
                                        "answers requests addressed to localhost, an IP address or this machine's "
                                        f"name; to serve this name, pass --allow-host {name} (or set --api-key)"
                                        + (TEST_CLIENT_HINT if name == "testserver" else ""))
            # any web page may POST a multipart form to a server without a key (a "simple" request: no CORS
            # preflight), and its images were added to the index; browsers mark such requests Sec-Fetch-Site:
            # cross-site, the web page's own same-origin. (With a key, the X-API-Key header needs a preflight.)
            if scope["method"] not in SAFE_METHODS and _header(scope, b"sec-fetch-site") == b"cross-site":
                return await send_error(send, 403, "cross-site request refused: a server without --api-key takes "
                                        "requests from its own web page and from non-browser clients only")
            return await self.app(scope, receive, send)
        if route_path(scope) in self.open_paths:
            return await self.app(scope, receive, send)
        given, where = _header(scope, b"x-api-key"), "X-API-Key"
        if given is None:  # Prometheus's scrape config can send an Authorization header only (before 2.55: no other)
            given, where = _bearer(_header(scope, b"authorization")), "Authorization"
        if given is None:
            return await send_error(send, 401, "missing API key: send it in the X-API-Key header (or as "
                                    "Authorization: Bearer KEY, as Prometheus's `authorization: credentials` does)")
        if not hmac.compare_digest(given, self.key):
            return await send_error(send, 401, f"wrong API key in the {where} header")
        await self.app(scope, receive, send)


def _bearer(value: bytes | None) -> bytes | None:
    """KEY of `Authorization: Bearer KEY` (scheme in any case); None for no header, another scheme (Basic) or no key."""
    scheme, _, token = (value or b"").strip().partition(b" ")
    return token.strip() or None if scheme.lower() == b"bearer" else None


# no page of another site may frame this one's (it could trick clicks on "add", "remove" or a stored API key's
# page); no answer is to be read as another type than it says (a browser "sniffing" an error reply as HTML)
SECURITY_HEADERS = [(b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
                    (b"x-content-type-options", b"nosniff")]


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS to every answer (create_app puts it outside Starlette's error middleware: 500s too)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _TooLarge(Exception):
    pass


async def _unless_disconnected(app_call, receive, timeout: float, answered) -> bool:
    """Runs app_call within `timeout` (asyncio.TimeoutError past it) while watching `receive` for the client's
    disconnect; True when the client went away before `answered()`, the app then cancelled: a client that gave up
    (its own timeout, a closed tab) no longer leaves its request decoding and embedding until --timeout, or past it."""
    app_task = asyncio.ensure_future(app_call)

    async def watch() -> None:
        # after the body, a server's only message is the disconnect (anything else: stop watching, never spin on it);
        # it says so once the answer is sent too, which is not a client leaving
        if (await receive())["type"] != "http.disconnect" or answered():
            await asyncio.Event().wait()

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({app_task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if app_task in done:
            app_task.result()  # its exception, if any
            return False
        if watcher in done and not app_task.done():  # the client left (after the answer, receive says so too)
            app_task.cancel()
            await asyncio.gather(app_task, return_exceptions=True)
            return True
        app_task.cancel()  # past the deadline, as asyncio.wait_for did
        await asyncio.gather(app_task, return_exceptions=True)
        raise asyncio.TimeoutError
    finally:
        watcher.cancel()
        if not app_task.done():  # this coroutine itself cancelled
            app_task.cancel()


class LimitsMiddleware:
    """Reads the body up front (at most max_body_bytes, within the timeout), then runs the app with a deadline.

    Paths in `no_deadline` (index writes, which must not be cut off half-way) get the body deadline only.
    Past the deadline: 408 while the body is still arriving (the client is slow), else 503 (the server could not
    answer in time: standard for overload, and clients and proxies know to retry it).
    """

    def __init__(self, app, max_body_bytes: int, timeout_s: float, no_deadline: tuple = ()) -> None:
        self.app, self.max_body, self.timeout = app, int(max_body_bytes), float(timeout_s)
        self.no_deadline = set(no_deadline)

    def _too_large(self, size: str) -> str:
        return f"request body is {size}; the limit is {self.max_body:,} bytes ({self.max_body / 2**20:g} MB)"

    async def _read_body(self, receive) -> bytes | None:
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                raise _TooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await send_error(send, 400, "Content-Length header is not a number")
            if int(length) > self.max_body:
                return await send_error(send, 413, self._too_large(f"{int(length):,} bytes"))
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.timeout)
        except _TooLarge:
            return await send_error(send, 413, self._too_large(f"over {self.max_body:,} bytes"))
        except asyncio.TimeoutError:
            return await send_error(
                send, 408, f"the request body did not arrive within {self.timeout:g} s (--timeout); send a smaller "
                "body or use a faster connection, or start the server with a larger --timeout",
            )
        if body is None:  # client went away
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        async def replay_then_wait():  # after the body, receive is _unless_disconnected's: the app waits
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()

        if route_path(scope) in self.no_deadline:  # an index add runs to the end, client or not
            return await self.app(scope, replay, send)
        started = False

        async def send_tracked(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        remaining = max(self.timeout - (time.monotonic() - start), 0.001)
        try:
            if await _unless_disconnected(self.app(scope, replay_then_wait, send_tracked), receive, remaining,
                                          lambda: started):
                log.info("%s %s: the client went away; its request was stopped", scope["method"], request_path(scope))
        except asyncio.TimeoutError:
            log.warning("%s %s took longer than %g s; answered 503", scope["method"], request_path(scope),
                        self.timeout)
            if not started:
                await send_error(
                    send, 503, f"the request took longer than {self.timeout:g} s (--timeout): the server is busy or "
                    "the request too large; retry, send fewer items per request, or start the server with a larger "
                    "--timeout", {"Retry-After": "1"},
                )
