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


def _request_bytes(kind: str, image: bytes, port: int) -> bytes:
    """One complete HTTP/1.1 request, built once: the load client only writes bytes and reads replies, so it takes
    as little CPU as possible from the server it shares the machine with (httpx spent ~2 ms per request here)."""
    if kind == "text":
        body, ctype = json.dumps({"texts": [TEXT]}).encode(), "application/json"
    else:
        b = "polymodal-bench-boundary"
        body = (f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{b}--\r\n".encode()
        ctype = f"multipart/form-data; boundary={b}"
    head = f"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _exchange(reader, writer, request: bytes) -> int:
    """Send one request on a kept-alive connection and read the whole reply; returns the HTTP status."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return int(head.split(b" ", 2)[1])


async def _load(url: str, image: bytes, concurrency: int, requests: int, time_limit: float, kind: str = "image") -> dict:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    request = _request_bytes(kind, image, int(port))
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + time_limit

    async def worker() -> None:
        nonlocal issued, errors
        conn = None
        while issued < requests and time.monotonic() < deadline:
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
    ap.add_argument("--kinds", default="image,text", help="what the requests embed: image, text or both")
    ap.add_argument("--image", help="query image file (default: the sample gallery's coffee.jpg)")
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
    runtimes = runnable(runtimes, "serve_load")
    if not runtimes:
        raise UsageError("none of --runtime runs on this CPU; add torch or onnx")

    for flag, path in (("--db", args.db), ("--image", args.image), ("--onnx-dir", args.onnx_dir)):
        if path and not Path(path).exists():  # before any server starts, not a traceback (or a dead server) later
            raise UsageError(f"no {flag} at {path}")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        db = Path(args.db) if args.db else _gallery_db(args.model, work)
        image = Path(args.image).read_bytes() if args.image else _default_image(work)
        qps: dict[tuple[str, bool, int], float] = {}
        with open(work / "server.log", "ab") as log:
            for runtime in runtimes:
                model = args.model
                if runtime == "onnx":
                    model = args.onnx_dir or _export(args.model, work / "onnx", log)
                for batching in (True, False):
                    _measure(args, db, image, levels, runtime, model, batching, log, qps)
    top = max(levels)
    for kind in args.kinds.split(","):
        for runtime in runtimes:
            on, off = qps.get((runtime, True, top, kind)), qps.get((runtime, False, top, kind))
            print(json.dumps({"bench": "serve_load", "runtime": runtime, "kind": kind, "ratio": "qps_batching/qps_no_batching",
                              "concurrency": top, "value": round(on / off, 2) if on and off else None,
                              "cpus": os.cpu_count()}))
        for runtime in (r for r in runtimes if r != "torch" and "torch" in runtimes):
            on, off = qps.get((runtime, True, top, kind)), qps.get(("torch", True, top, kind))
            print(json.dumps({"bench": "serve_load", "kind": kind, "ratio": f"qps_{runtime}/qps_torch (batching on)",
                              "concurrency": top, "value": round(on / off, 2) if on and off else None}))
    return 0


def _export(model: str, out: Path, log) -> str:
    """`polymodal export onnx` with its default gate (the sample photos); returns the export folder."""
    subprocess.run([sys.executable, "-m", "polymodal", "export", "onnx", model, "--out", str(out), "--json"],
                   check=True, stdout=log, stderr=log, timeout=1800)
    return str(out)


def _measure(args, db, image, levels, runtime, model, batching, log, qps) -> None:
    import httpx

    server = Server(args, db, batching, log, runtime, model)
    try:
        server.wait_ready(args.start_timeout)
        for _ in range(4):  # warm-up: first calls allocate and fill caches
            httpx.post(server.url + "/v1/embed", files={"image": ("q.jpg", image, "image/jpeg")}, timeout=60)
        for kind in args.kinds.split(","):
            for c in levels:
                before = _batch_stats(httpx.get(server.url + "/metrics").text, kind)
                result = asyncio.run(_load(server.url, image, c, args.requests, args.time_limit, kind))
                after = _batch_stats(httpx.get(server.url + "/metrics").text, kind)
                passes = after[1] - before[1]
                mean_batch = round((after[0] - before[0]) / passes, 2) if passes else None
                qps[(runtime, batching, c, kind)] = result["qps"]
                line = {"bench": "serve_load", "runtime": runtime, "kind": kind, "model": args.model,
                        "threads": args.threads, "batching": batching, "concurrency": c, **result,
                        "mean_batch": mean_batch}
                print(json.dumps(line))
                sys.stdout.flush()
    finally:
        server.stop()


def _default_image(work: Path) -> bytes:
    from polymodal.data.samples import write_sample_gallery

    return next(p for p in write_sample_gallery(work / "gallery") if p.name == "coffee.jpg").read_bytes()


if __name__ == "__main__":
    sys.exit(main())
