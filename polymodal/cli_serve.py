"""`polymodal serve`: the HTTP service over an index (needs the serve extra; FastAPI is imported only here)."""

from __future__ import annotations

import errno
import importlib
import logging
import math
import os
import re
import socket
import sys

from polymodal.cli_options import (add_precision, add_qdrant, add_runtime, index_model_name, old_index_model,
                                   qdrant_collection)
from polymodal.errors import PolymodalError
from polymodal.models.inputs import plural

log = logging.getLogger(__name__)

# At a stop (SIGTERM, Ctrl-C), requests in flight have their answers by --timeout (their deadline's 503 or 408
# included; an index write runs to its end); from --timeout + this, a connection whose client does not take its
# answer is cut (it held the process until systemd's SIGKILL)
DRAIN_GRACE_S = 5.0


def cmd_serve(args) -> int:
    try:
        _serve(args)
    except KeyboardInterrupt:  # re-raised by uvicorn after its graceful shutdown, or come while the models load (the
        pass  # seconds before the "serving" line: a stop during them exited 143 / 130, a failed unit to systemd)
    print("polymodal: server stopped", file=sys.stderr)  # a requested stop: exit 0, or systemd marks it failed
    return 0


def _serve(args) -> None:
    from polymodal.index import ImageIndex
    from polymodal.serve.limits import ServeSettings

    if args.max_batch < 1 or not 0 <= args.max_wait_ms < math.inf:  # written so that nan fails too
        raise PolymodalError(f"--max-batch must be at least 1 and --max-wait-ms a finite number from 0, got "
                             f"{args.max_batch}, {args.max_wait_ms}")
    if not 0 <= args.port <= 65535:
        raise PolymodalError(f"--port must be 0-65535, got {args.port}")
    try:  # the serve extra, checked before the model loads (uvicorn is used below; fastapi by create_app)
        import uvicorn

        importlib.import_module("fastapi")
        from starlette import formparsers

        # Starlette imports python-multipart lazily: without it every upload would be a 500
        missing = "python-multipart" if formparsers.multipart is None else None
    except ImportError as exc:
        missing = exc.name
    if missing:
        raise PolymodalError(f"serving needs the serve extra ({missing} is missing); pip install 'polymodal[serve]'")
    if args.max_body_mb < 1:  # checked here, not only by ServeSettings: its message would name max_body_bytes
        raise PolymodalError(f"--max-body-mb must be at least 1, got {args.max_body_mb}")
    if args.max_connections < 1:
        raise PolymodalError(f"--max-connections must be at least 1, got {args.max_connections}")
    if not 0 < args.timeout < math.inf:
        raise PolymodalError(f"--timeout must be a finite number of seconds over 0, got {args.timeout:g}")
    if args.root_path and not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+/?", args.root_path):
        raise PolymodalError(f"--root-path must be a URL path like /photos, got {args.root_path[:80]!r}")
    args.root_path = args.root_path.rstrip("/")
    # no index: a server of /v1/vqa or /v1/caption alone, when a model for one is named (create_app checks the rest)
    indexless = not args.db and args.qdrant is None and bool(args.vqa_model or args.caption_model or args.model)
    if bool(args.db) == (args.qdrant is not None) and not indexless:
        raise PolymodalError("pass either --db DB (a local index) or --qdrant URL (a collection) to serve, or only "
                             "--caption-model / --vqa-model to serve captions or answers without an index")
    from polymodal.serve.logs import configure

    configure(args.log_format)  # times, request ids; before the model loads, whose warnings are log lines too
    level = args.log_level or ("info" if args.verbose else "warning")
    if args.log_level:  # else as the CLI's basicConfig set it from -v
        logging.getLogger().setLevel(level.upper())
    index = None if indexless else qdrant_collection(args) or ImageIndex(args.db)
    info = index.info() if index is not None else None  # a missing index: one line, before the model loads
    settings = ServeSettings(
        batching=not args.no_batching,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_mb * 2**20,
        request_timeout_s=args.timeout,
        allowed_hosts=tuple(args.allow_host or ()),
        follow_symlinks=args.follow_symlinks,
        hide_paths=args.hide_paths,
    )
    # --runtime auto stays auto: create_app settles it per model (an export beside a built-in VQA model, say)
    if args.threads is not None and args.threads < 1:
        raise PolymodalError(f"--threads must be at least 1, got {args.threads}")
    from polymodal.serve.app import create_app

    name = index_model_name(index, args.model) if index is not None else args.model
    sock = _bind(args.host, args.port)  # before the slow model load: a busy port is one line and exit 2
    try:
        extra = {"threads": args.threads} if args.runtime != "torch" else {}  # create_app: for onnx models only
        # a VQA --model answers /v1/vqa next to the index's own model (create_app loads both)
        app = create_app(name, args.db or index, api_key=args.api_key, settings=settings,
                         runtime=args.runtime, precision=args.precision, vqa_model=args.vqa_model,
                         caption_model=args.caption_model, **extra)
    except PolymodalError as exc:
        sock.close()
        if error := old_index_model(index, name, exc):
            raise error from None
        raise
    except BaseException:
        sock.close()
        raise
    if args.threads is not None and "torch" in sys.modules:  # only if some model runs on torch: an export served
        # by --runtime auto stays torch-free. The model thread starts with the server, after this, and takes the count
        import torch

        torch.set_num_threads(args.threads)
    svc = app.state.service
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        # what anyone could do: no index, its models for anyone's photos; a Qdrant collection (or a read-only
        # folder) is only searched
        exposed = ("use " + " and ".join(svc.endpoints()) if index is None else
                   "use and change the index" if svc.writable else "use the index but not change it")
        log.warning("serving on %s without --api-key: anyone who can reach this address can %s (requests must name "
                    "the server by an IP address, localhost or this machine's name: add the names clients use, such "
                    "as a container's service name, with --allow-host)", args.host, exposed)
    from polymodal.serve.protocol import header_deadline_protocol
    from polymodal.serve.service import runs_on

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    served = [f"answering questions with {svc.vqa_model.key}"] if svc.vqa and svc.vqa_model is not svc.model else []
    if svc.caption_model is not None:  # an ONNX captioner's int8 step writes other captions than fp32: say which
        served.append(f"captioning with {svc.caption_model.key} ({runs_on(svc.caption_model)['precision']})")
    # limit_concurrency: past it (open connections, or requests in progress) uvicorn answers 503 at once, so N slow
    # uploads cannot hold N x --max-body-mb of memory; the protocol closes connections whose headers do not come.
    # + 1: uvicorn counts the asking connection itself (limit 1 answered every request 503; N served N - 1)
    config = uvicorn.Config(app, log_level=level, log_config=None, timeout_keep_alive=5,
                            server_header=False, root_path=args.root_path, limit_concurrency=args.max_connections + 1,
                            http=header_deadline_protocol(drain_s=args.timeout + DRAIN_GRACE_S))
    if index is not None:
        how = runs_on(svc.model)
        what = (f"{svc.model.key} ({how['runtime']}, {how['precision']}) over {args.db or index.where()} "
                f"({', '.join([plural(info['count'], 'image'), *served])})")
    else:  # what it answers, and that nothing searches
        what = f"{' and '.join(served)}, without an index (no search, embed or classify)"
    line = f"polymodal: serving {what} on http://{shown}:{port} - web page at /, API docs at /docs; Ctrl-C stops"
    try:  # uvicorn re-raises Ctrl-C / SIGTERM after its graceful shutdown, most of the time (once in a busy test run,
        # a Ctrl-C right after startup came back as a plain return): cmd_serve takes both
        _announcing_server(uvicorn, config, line).run(sockets=[sock])
    finally:
        sock.close()


def _announcing_server(uvicorn, config, line: str):
    """A uvicorn server that prints ``line`` once it has started: its signal handlers are in place by then, so a
    Ctrl-C or SIGTERM right after the line stops it cleanly (printed before run(), a signal in between could land
    while asyncio and uvicorn were still starting, and the server then hung, seen under a busy test run)."""

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(line, flush=True)

    return AnnouncingServer(config)


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise PolymodalError(f"cannot resolve --host {host!r} ({exc.strerror}); pass an address like 127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        fix = ("pass another --port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else
               "pass a --host address of this machine (127.0.0.1, 0.0.0.0 for every interface)")
        raise PolymodalError(f"cannot listen on {host}:{port} ({exc.strerror}); {fix}") from None
    return sock


def add_parsers(sub) -> None:
    s = sub.add_parser("serve", help="serve an index (or a Qdrant collection) over HTTP: embed, search, classify, "
                       "answer questions and caption (--vqa-model, --caption-model), web page (needs [serve])")
    s.add_argument("--model", default=None, help="built-in name or checkpoint path (default: the index's model); "
                   "a VQA model (easy-vqa, coco-yesno) answers /v1/vqa while the index's model embeds and searches")
    s.add_argument("--vqa-model", default=None,
                   help="a VQA model (name, checkpoint or, with --runtime onnx, export folder) for /v1/vqa beside "
                   "--model, e.g. --runtime onnx --model LITE_EXPORT --vqa-model VQA_EXPORT")
    s.add_argument("--caption-model", default=None,
                   help="a captioner (captioner, a `polymodal train captioner` folder or, with --runtime onnx, "
                        "its `polymodal export onnx` folder) for /v1/caption")
    s.add_argument("--db", help="index folder built by `polymodal index` (without --db or --qdrant: a server of "
                   "/v1/vqa and /v1/caption alone, for --vqa-model and --caption-model)")
    add_qdrant(s, "serve this Qdrant collection instead of --db (searches and thumbnails; images are added by "
               "pushing indexes to it: polymodal index --qdrant); several servers can share one")
    add_runtime(s, "onnx: serve the export of --model (`polymodal export onnx`) through onnxruntime, without torch",
                from_index=True)  # without --model it serves the index's model
    add_precision(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    s.add_argument("--root-path", default="", help="the path a reverse proxy serves this under, e.g. /photos (the "
                   "proxy strips it): the page, /docs and thumbnail links then point there")
    s.add_argument(
        "--api-key", default=os.environ.get("POLYMODAL_API_KEY"),  # set but blank: create_app refuses it
        help="require this key in the X-API-Key header (or as Authorization: Bearer KEY, which Prometheus sends) on "
        "every endpoint but /healthz, the page shell and the API docs "
        "(default: $POLYMODAL_API_KEY; the variable keeps the key out of the process list)",
    )
    s.add_argument("--allow-host", action="append", metavar="NAME",
                   help="without --api-key, the server answers only requests addressed to localhost, an IP address or "
                   "this machine's name (a web page cannot then reach it by rebinding its own DNS name): add a name "
                   "clients use, e.g. the one a reverse proxy passes as Host (repeat for more; * for any)")
    s.add_argument("--follow-symlinks", action="store_true",
                   help="show thumbnails of indexed files that are links to files outside the indexed folders (a "
                   "dataset made of links); by default such a link is refused (403), as one in a folder someone sent "
                   "could show any photo of this machine to every client")
    s.add_argument("--hide-paths", action="store_true",
                   help="tell clients file names, not where files lie: a search hit's path is its file name (its id "
                   "tells same-named files apart), and /v1/info and error messages leave out the index's folder (or "
                   "Qdrant's address); for a server shared widely, whose paths would show user and project names. "
                   "Default: hits give the absolute path on this machine")
    s.add_argument("--max-batch", type=int, default=8, help="items per merged forward pass (default 8)")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5)")
    s.add_argument("--no-batching", action="store_true", help="run each request's forward pass alone")
    s.add_argument("--threads", type=int, default=None,
                   help="threads for the models' forward passes: torch's for models run by PyTorch, each onnxruntime session's "
                   "for exports (default: the runtime's choice; 1 can be steadier on a busy machine)")
    s.add_argument("--max-body-mb", type=int, default=20, help="largest request body in MB (default 20)")
    s.add_argument("--timeout", type=float, default=30.0, help="request timeout in seconds (default 30)")
    s.add_argument("--max-connections", type=int, default=256,
                   help="open connections (and requests in progress) the server takes at once; past it a request gets "
                   "503 at once (default 256; a browser opens up to 6). Connections whose request headers take over "
                   "10 s are closed. A server shared widely belongs behind a reverse proxy (nginx, Caddy)")
    s.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="text: a line per record, with its time (but where systemd's journal adds one) and the "
                   "request's id (X-Request-ID, answered in every response); json: a JSON object per line (time, "
                   "level, logger, message, request_id, method, path, status, duration_ms), for a log collector")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="the least severe records logged (default: warning; info with -v, which adds the access log)")
    s.set_defaults(func=cmd_serve, runtime_per_model=True)  # --runtime auto: settled per model by create_app
