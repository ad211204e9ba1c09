"""A server left running: a bounded mix of requests to `polymodal serve`, its memory and latency sampled as it goes.

Starts `polymodal serve` on a free loopback port, sends --requests requests from --clients threads (text and image
searches, "more like this", thumbnails, /v1/embed of texts and images, /v1/classify with labels never seen before,
uploads to /v1/index and their removal, /metrics, and bad requests that get a 4xx), and every --window requests
prints one JSON line: the server's RSS, threads and open files, p50/p95 latency of the window, requests of each kind. The last
line compares the last third of the windows with the first third after warm-up (--warm-up windows), each by its
median, as ratios: memory or latency that keeps growing (a cache without a bound, per-request objects kept) shows
there as an RSS ratio above 1 that grows with --requests, where a server flat after warm-up stays near 1.0. It
always stops by itself (--seconds at most).

    python benchmarks/serve_soak.py                                 # lite over the sample gallery, 10,000 requests
    python benchmarks/serve_soak.py --db pics.idx --images photos/ --requests 20000

Every text, label and upload differs from the last, so a per-input cache without a bound grows under it. The client
runs on the same machine as the server; compare runs with each other (before and after a change), on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from run_context import announce

WORDS = ("dog cat man woman child boy girl beach snow grass water ball red blue green black white running jumping "
         "sitting street bike car mountain park field river tree building shirt hat dress playing swimming").split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_stats(pid: int) -> dict:
    """RSS (MB), threads and open files of a process, from /proc (Linux; elsewhere nulls)."""
    out = {"rss_mb": None, "threads": None, "fds": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mb"] = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))) + f" {rng.randint(0, 10**6)}"


class Mix:
    """One request at a time, of a fixed mix; uploads are removed again five at a time, so the index stays small."""

    def __init__(self, images: list[bytes], ids: list, uploads: bool) -> None:
        self.images, self.ids, self.uploads = images, ids, uploads
        self.lock = threading.Lock()
        self.uploaded: list = []
        self.n = 0

    def one(self, c, rng: random.Random) -> str:  # -> the request's kind
        r, img = rng.random(), rng.choice(self.images)
        if r < 0.30:
            c.post("/v1/search", json={"text": _sentence(rng), "k": rng.randint(1, 20)}).raise_for_status()
            return "search_text"
        if r < 0.40:
            c.post("/v1/search", files={"image": ("q.jpg", img, "image/jpeg")}, data={"k": "5"}).raise_for_status()
            return "search_image"
        if r < 0.55:
            c.get(f"/v1/thumb/{rng.choice(self.ids)}").raise_for_status()
            return "thumb"
        if r < 0.65:
            c.post("/v1/embed", json={"texts": [_sentence(rng) for _ in range(rng.randint(1, 4))]}).raise_for_status()
            return "embed_text"
        if r < 0.72:
            c.post("/v1/embed", files={"image": ("e.jpg", img, "image/jpeg")}).raise_for_status()
            return "embed_image"
        if r < 0.76:
            labels = ",".join(f"{rng.choice(WORDS)} {rng.randint(0, 10**6)}" for _ in range(3))
            c.post("/v1/classify", files={"image": ("c.jpg", img, "image/jpeg")},
                   data={"labels": labels}).raise_for_status()
            return "classify"
        if r < 0.79:
            c.post("/v1/search", json={"like": rng.choice(self.ids), "k": 5}).raise_for_status()
            return "like"
        if r < 0.81 and self.uploads:
            with self.lock:
                self.n += 1
                n = self.n
            # new bytes each time (a comment segment after the JPEG's SOI marker), so each upload is added
            data = img[:2] + b"\xff\xfe" + (18).to_bytes(2, "big") + n.to_bytes(16, "big") + img[2:]
            resp = c.post("/v1/index", files={"image": (f"u{n}.jpg", data, "image/jpeg")})
            resp.raise_for_status()
            with self.lock:
                self.uploaded += [a["id"] for a in resp.json()["added"]]
            return "upload"
        if r < 0.83 and self.uploads:
            with self.lock:
                gone, self.uploaded = self.uploaded[:5], self.uploaded[5:]
            if gone:
                c.post("/v1/index", json={"remove": gone}).raise_for_status()
            return "remove"
        if r < 0.84:
            c.get("/metrics").raise_for_status()
            return "metrics"
        bad = rng.choice((
            lambda: c.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}),
            lambda: c.post("/v1/search", json={"text": "x", "k": 0}),
            lambda: c.post("/v1/search", json={"txt": "x"}),
            lambda: c.get(f"/v1/thumb/{rng.randint(10**6, 10**9)}"),
            lambda: c.get(f"/nowhere/{rng.randint(0, 10**9)}"),
            lambda: c.post("/v1/embed", files={"image": ("x.jpg", rng.randbytes(300), "image/jpeg")}),
        ))()
        if not 400 <= bad.status_code < 500:
            raise RuntimeError(f"a bad request got {bad.status_code}: {bad.text[:200]}")
        return "bad"


def soak(base: str, pid: int, images: list[bytes], requests: int, clients: int, window: int, seconds: float,
         uploads: bool = True, warm_up: int = 1, out=print) -> dict:
    """The load against the server at `base` (process `pid`); prints a line per window -> the final ratios line."""
    import httpx

    with httpx.Client(base_url=base, timeout=60) as c:
        ids = [h["id"] for h in c.post("/v1/search", json={"text": "a photo", "k": 100}).json()["hits"]]
    mix = Mix(images, ids, uploads)
    lock, todo, stop_at, start = threading.Lock(), iter(range(requests)), time.time() + seconds, time.perf_counter()
    samples, rows, failures, count = [], [], [], [0]

    def sample(done: int) -> None:
        with lock:
            window_, samples[:] = samples[:], []
        if not window_:
            return
        lat = np.array([s[1] for s in window_]) * 1000
        row = {"bench": "serve_soak", "requests": done, "seconds": round(time.perf_counter() - start, 1),
               **process_stats(pid), "p50_ms": round(float(np.percentile(lat, 50)), 1),
               "p95_ms": round(float(np.percentile(lat, 95)), 1),
               "kinds": {k: sum(1 for s in window_ if s[0] == k) for k in sorted({s[0] for s in window_})}}
        rows.append(row)
        out(json.dumps(row))

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as c:
            while time.time() < stop_at and not failures:
                with lock:
                    if next(todo, None) is None:
                        return
                t = time.perf_counter()
                try:
                    kind = mix.one(c, rng)
                except Exception as exc:  # noqa: BLE001 - a 5xx or a dropped connection ends the run, named
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return
                with lock:
                    samples.append((kind, time.perf_counter() - t))
                    count[0] += 1
                    done = count[0]
                if done % window == 0:
                    sample(done)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sample(count[0])
    if mix.uploaded:  # the last uploads leave too: --db ends as it was
        with httpx.Client(base_url=base, timeout=60) as c:
            c.post("/v1/index", json={"remove": mix.uploaded}).raise_for_status()
    if not rows:  # no request answered (the first ones failed, or --seconds ran out): that failure is the result
        summary = {"bench": "serve_soak", "requests": 0, "failure": failures[0] if failures else "no request answered"}
        out(json.dumps(summary))
        return summary
    # the first and the last third of the windows after warm-up, each by its median: one busy window on a shared
    # machine moves a window's p50 by a third, and would read as growth compared alone
    steady = rows[min(warm_up, len(rows) - 1):]
    third = max(1, len(steady) // 3)
    early, late = steady[:third], steady[-third:]

    def median(part: list, key: str):
        values = [r[key] for r in part if r[key] is not None]
        return float(np.median(values)) if values else None

    def ratio(key: str):
        a, b = median(early, key), median(late, key)
        return round(b / a, 3) if a and b is not None else None

    summary = {"bench": "serve_soak", "ratio": "last third of the windows / first third after warm-up (medians)",
               "requests": rows[-1]["requests"], "windows": len(rows), "compared": len(early),
               "rss": ratio("rss_mb"), "p50": ratio("p50_ms"), "p95": ratio("p95_ms"),
               "rss_mb": [median(early, "rss_mb"), median(late, "rss_mb")],
               "threads": [steady[0]["threads"], rows[-1]["threads"]], "fds": [steady[0]["fds"], rows[-1]["fds"]],
               "failure": failures[0] if failures else None}
    out(json.dumps(summary))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--db", help="an existing index (default: the sample gallery, indexed into a temporary folder; "
                    "uploads are added to --db and removed again)")
    ap.add_argument("--images", help="folder of query photos (default: the sample gallery's)")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=3, help="client threads")
    ap.add_argument("--window", type=int, default=1000, help="requests per sample")
    ap.add_argument("--warm-up", type=int, default=1, help="windows before the one the ratios compare with")
    ap.add_argument("--seconds", type=float, default=600.0, help="stop after this long, whatever is left")
    ap.add_argument("--no-uploads", action="store_true", help="leave /v1/index out (a read-only index)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    args = ap.parse_args(argv)
    for flag, value in (("--requests", args.requests), ("--clients", args.clients), ("--window", args.window)):
        if value < 1:  # (0 ended in a traceback: no window to compare, or a division by zero in each client)
            print(f"error: {flag} must be at least 1, got {value}", file=sys.stderr)
            return 2
    announce(__file__)
    for flag, path in (("--db", args.db), ("--images", args.images)):
        if path and not Path(path).exists():
            print(f"error: no {flag} at {path}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        work = Path(tmp)
        photos = Path(args.images) if args.images else None
        if args.db:
            db = Path(args.db)
        else:
            from serve_load import _gallery_db

            db, photos = _gallery_db(args.model, work), photos or work / "gallery"
        images = [f.read_bytes() for f in sorted(photos.iterdir())[:64] if f.suffix.lower() in (".jpg", ".jpeg", ".png")]
        if not images:
            print(f"error: no .jpg or .png photos in {photos}", file=sys.stderr)
            return 2
        port = _free_port()
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        with open(work / "server.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "polymodal", "serve", "--db", str(db), "--port", str(port),
                                     "--threads", str(args.threads)], stdout=log, stderr=log, env=env)
            try:
                base = f"http://127.0.0.1:{port}"
                if not _ready(base, proc, args.start_timeout):
                    print(f"error: the server did not start: {(work / 'server.log').read_text()[-500:]}",
                          file=sys.stderr)
                    return 1
                summary = soak(base, proc.pid, images, args.requests, args.clients, args.window, args.seconds,
                               uploads=not args.no_uploads, warm_up=args.warm_up)
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 1 if summary["failure"] else 0


def _ready(base: str, proc, timeout: float) -> bool:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


if __name__ == "__main__":
    sys.exit(main())
