"""HTTP serving load: embedding requests (images, and texts) at several concurrencies, micro-batching on and off.

Starts `polymodal serve` on a free loopback port per configuration, sends a bounded load (a fixed number of requests
per concurrency level, cut off by a time limit), stops the server, and prints one JSON line per measurement
(QPS, p50/p99 latency in ms, mean images per forward pass) plus a final ratio line: QPS with batching / without
at the highest concurrency. It always stops by itself.

    python benchmarks/serve_load.py                       # lite over the sample gallery, concurrency 1,8,32
    python benchmarks/serve_load.py --db pics.idx --requests 200

The client runs on the same machine as the server and takes CPU from it; compare configurations with each other,
not with benchmarks/embed_throughput.py. `--runtime torch,torch-bf16,onnx` (the default) measures PyTorch fp32,
PyTorch with `--precision bf16`, and onnxruntime in one run; the ONNX runtime serves the export of --model
(`polymodal export onnx`, made into a temporary folder unless --onnx-dir).

Every configuration's server runs from the start, and the loads take turns between them: `--repeat 3` measures each
(kind, concurrency) three times, the configurations in a rotated order each round, and the ratio lines give the
median of the rounds' ratios (and their range), so a busy spell on a shared machine lands on one round's turn, not
on one configuration. `--kinds search` sends text searches (/v1/search), `--image DIR` cycles through the photos of
a folder instead of one photo.
"""

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cpu_runtimes import runnable
from run_context import announce, counts

RUNTIMES = ("torch", "torch-bf16", "onnx")  # torch-bf16: `serve --precision bf16`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch_stats(metrics_text: str, kind: str = "image") -> tuple[float, float]:
    """(sum, count) of polymodal_batch_size for one kind (image or text), from the Prometheus text."""
    out = []
    for suffix in ("sum", "count"):
        m = re.search(rf'^polymodal_batch_size_{suffix}{{kind="{kind}"}} (\S+)$', metrics_text, re.M)
        out.append(float(m.group(1)) if m else 0.0)
    return out[0], out[1]


class Server:
    def __init__(self, args, db: Path, batching: bool, log, runtime: str = "torch", model: str | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "polymodal", "serve", "--model", model or args.model, "--db", str(db),
               "--runtime", "onnx" if runtime == "onnx" else "torch",
               "--precision", "bf16" if runtime == "torch-bf16" else "fp32",
               "--host", "127.0.0.1", "--port", str(self.port), "--max-batch", str(args.max_batch),
               "--max-wait-ms", str(args.max_wait_ms)]
        if not batching:
            cmd.append("--no-batching")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.log = Path(log.name)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                # the log lives in the run's temporary folder, gone once this exits: say its last line here
                raise SystemExit(f"server exited with code {self.proc.returncode}: {_last_line(self.log)}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit(f"server did not answer /healthz within {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1].strip() if lines else "(it wrote nothing)"


TEXT = "a brown dog runs along the beach next to the water"


KINDS = ("image", "text", "search")
BATCH_KIND = {"image": "image", "text": "text", "search": "text"}  # the batcher's kind each request kind runs as


def _request_bytes(kind: str, image: bytes, port: int) -> bytes:
    """One complete HTTP/1.1 request, built once: the load client only writes bytes and reads replies, so it takes
    as little CPU as possible from the server it shares the machine with (httpx spent ~2 ms per request here)."""
    path = "/v1/search" if kind == "search" else "/v1/embed"
    if kind == "search":
        body, ctype = json.dumps({"text": TEXT, "k": 10}).encode(), "application/json"
    elif kind == "text":
        body, ctype = json.dumps({"texts": [TEXT]}).encode(), "application/json"
    else:
        b = "polymodal-bench-boundary"
        body = (f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{b}--\r\n".encode()
        ctype = f"multipart/form-data; boundary={b}"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _exchange(reader, writer, request: bytes) -> int:
    """Send one request on a kept-alive connection and read the whole reply; returns the HTTP status."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return int(head.split(b" ", 2)[1])


async def _load(url: str, images: list[bytes], concurrency: int, requests: int, time_limit: float,
                kind: str = "image") -> dict:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    built = [_request_bytes(kind, image, int(port)) for image in (images if kind == "image" else images[:1])]
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + time_limit

    async def worker() -> None:
        nonlocal issued, errors
        conn = None
        while issued < requests and time.monotonic() < deadline:
            request = built[issued % len(built)]
            issued += 1
            t0 = time.perf_counter()
            try:
                conn = conn or await asyncio.open_connection(host, int(port))
                status = await asyncio.wait_for(_exchange(*conn, request), max(deadline - time.monotonic(), 0.1))
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                status, conn = 0, None  # reconnect for the next request
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
        if conn:
            conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies), "errors": errors, "seconds": round(seconds, 2),
        "qps": round(len(latencies) / seconds, 2) if seconds > 0 else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "timed_out": time.monotonic() >= deadline and len(latencies) + errors < requests,
    }


def _gallery_db(model: str, workdir: Path) -> Path:
    """An index of the sample gallery (needs scikit-image), built with the CLI in a temporary folder."""
    from polymodal.data.samples import write_sample_gallery

    gallery = workdir / "gallery"
    write_sample_gallery(gallery)
    db = workdir / "db"
    done = subprocess.run([sys.executable, "-m", "polymodal", "index", str(gallery), "--db", str(db), "--model",
                           model, "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    if done.returncode:  # e.g. a mistyped --model: polymodal's own line, not a CalledProcessError traceback
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise UsageError(f"indexing the sample gallery with --model {model} failed: "
                         f"{lines[-1] if lines else f'exit code {done.returncode}'}")
    return db


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--db", help="an existing index (default: the sample gallery, indexed into a temporary folder)")
    ap.add_argument("--kinds", default="image,text", help="what the requests do: image, text (embed) or search "
                    "(a text search), comma-separated")
    ap.add_argument("--image", help="query image file, or a folder whose photos (the first 64) the image requests "
                    "cycle through (default: the sample gallery's coffee.jpg)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the configurations take turns in each")
    ap.add_argument("--concurrency", type=counts, default=[1, 8, 32], help="concurrent clients, e.g. 1,8,32")
    ap.add_argument("--requests", type=int, default=320, help="requests per concurrency level")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per concurrency level, at most")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, help="torch threads in the server (default: torch's choice)")
    ap.add_argument("--runtime", default=",".join(RUNTIMES), help=f"comma-separated, some of: {', '.join(RUNTIMES)}")
    ap.add_argument("--onnx-dir", help="an existing export of --model (default: exported into a temporary folder)")
    ap.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for a server to start")
    args = ap.parse_args(argv)
    announce(__file__)
    try:
        return _run(args)
    except UsageError as exc:  # as the other benchmarks: one line and exit 2, as argparse's own mistakes
        print(f"error: {exc}", file=sys.stderr)
        return 2


class UsageError(Exception):
    """A mistake in the command line (a --runtime, a path, a --model): one line, no traceback."""


def _run(args) -> int:
    levels = args.concurrency
    runtimes = [r for r in args.runtime.split(",") if r]
    if not runtimes or set(runtimes) - set(RUNTIMES):
        raise UsageError(f"--runtime takes a comma-separated subset of {', '.join(RUNTIMES)}")
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        raise UsageError(f"--kinds takes a comma-separated subset of {', '.join(KINDS)}")
    if args.repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {args.repeat}")
    runtimes = runnable(runtimes, "serve_load")
    if not runtimes:
        raise UsageError("none of --runtime runs on this CPU; add torch or onnx")

    for flag, path in (("--db", args.db), ("--image", args.image), ("--onnx-dir", args.onnx_dir)):
        if path and not Path(path).exists():  # before any server starts, not a traceback (or a dead server) later
            raise UsageError(f"no {flag} at {path}")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        db = Path(args.db) if args.db else _gallery_db(args.model, work)
        images = _images(args.image, work)
        qps: dict[tuple, float] = {}  # (runtime, batching, concurrency, kind, round) -> QPS
        servers: dict[tuple[str, bool], Server] = {}
        with open(work / "server.log", "ab") as log:
            try:
                for runtime in runtimes:
                    model = args.model
                    if runtime == "onnx":
                        model = args.onnx_dir or _export(args.model, work / "onnx", log)
                    for batching in (True, False):
                        servers[(runtime, batching)] = Server(args, db, batching, log, runtime, model)
                for server in servers.values():
                    _warm_up(server, args.start_timeout, images[0])
                configs = list(servers)
                for rnd in range(args.repeat):
                    for kind in kinds:
                        for c in levels:
                            turn = rnd % len(configs)  # each round starts at another configuration
                            for runtime, batching in configs[turn:] + configs[:turn]:
                                _measure(args, servers[(runtime, batching)], images, c, kind, runtime, batching,
                                         rnd, qps)
            finally:
                for server in servers.values():
                    server.stop()
    for kind in kinds:
        for c in levels:
            for runtime in runtimes:
                _ratio(qps, kind, c, "qps_batching/qps_no_batching", (runtime, True), (runtime, False),
                       runtime=runtime, cpus=os.cpu_count())
            for runtime in (r for r in runtimes if r != "torch" and "torch" in runtimes):
                _ratio(qps, kind, c, f"qps_{runtime}/qps_torch (batching on)", (runtime, True), ("torch", True))
    return 0


def _ratio(qps: dict, kind: str, c: int, name: str, top: tuple, bottom: tuple, **extra) -> None:
    """One JSON line: the median over rounds of QPS(top) / QPS(bottom), each round's pair measured back to back."""
    rounds = sorted({key[4] for key in qps})
    values = [qps[(*top, c, kind, r)] / qps[(*bottom, c, kind, r)] for r in rounds
              if qps.get((*top, c, kind, r)) and qps.get((*bottom, c, kind, r))]
    print(json.dumps({"bench": "serve_load", **{k: v for k, v in extra.items() if k == "runtime"}, "kind": kind,
                      "ratio": name, "concurrency": c,
                      "value": round(float(np.median(values)), 2) if values else None,
                      "range": [round(min(values), 2), round(max(values), 2)] if values else None,
                      "rounds": len(values), **{k: v for k, v in extra.items() if k != "runtime"}}))


def _images(image: str | None, work: Path) -> list[bytes]:
    """The bytes of the query photos: --image's file, the first 64 photos of its folder, or the default photo."""
    if image is None:
        return [_default_image(work)]
    path = Path(image)
    if not path.is_dir():
        return [path.read_bytes()]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:64]
    if not files:
        raise UsageError(f"no .jpg or .png photos in --image {image}")
    return [p.read_bytes() for p in files]


def _export(model: str, out: Path, log) -> str:
    """`polymodal export onnx` with its default gate (the sample photos); returns the export folder."""
    subprocess.run([sys.executable, "-m", "polymodal", "export", "onnx", model, "--out", str(out), "--json"],
                   check=True, stdout=log, stderr=log, timeout=1800)
    return str(out)


def _warm_up(server: Server, timeout: float, image: bytes) -> None:
    import httpx

    server.wait_ready(timeout)
    for _ in range(4):  # warm-up: first calls allocate and fill caches
        httpx.post(server.url + "/v1/embed", files={"image": ("q.jpg", image, "image/jpeg")}, timeout=60)
    httpx.post(server.url + "/v1/search", json={"text": TEXT, "k": 10}, timeout=60)


def _measure(args, server: Server, images, c: int, kind: str, runtime: str, batching: bool, rnd: int, qps) -> None:
    import httpx

    if server.proc.poll() is not None:
        raise SystemExit(f"server exited with code {server.proc.returncode}: {_last_line(server.log)}")
    before = _batch_stats(httpx.get(server.url + "/metrics").text, BATCH_KIND[kind])
    result = asyncio.run(_load(server.url, images, c, args.requests, args.time_limit, kind))
    after = _batch_stats(httpx.get(server.url + "/metrics").text, BATCH_KIND[kind])
    passes = after[1] - before[1]
    mean_batch = round((after[0] - before[0]) / passes, 2) if passes else None
    qps[(runtime, batching, c, kind, rnd)] = result["qps"]
    line = {"bench": "serve_load", "runtime": runtime, "kind": kind, "model": args.model, "threads": args.threads,
            "batching": batching, "concurrency": c, "round": rnd, **result, "mean_batch": mean_batch}
    print(json.dumps(line))
    sys.stdout.flush()


def _default_image(work: Path) -> bytes:
    from polymodal.data.samples import write_sample_gallery

    return next(p for p in write_sample_gallery(work / "gallery") if p.name == "coffee.jpg").read_bytes()


if __name__ == "__main__":
    sys.exit(main())
