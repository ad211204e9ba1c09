"""Uploads to a served index: bursts of single-image uploads sent at once (POST /v1/index) to `polymodal serve` over
an index of --rows photos, with the index's delta (the code: vectors.faiss rewritten once it lags by 5%) against the
peer that rewrites vectors.faiss on every commit (delta.MERGE_FRACTION 0, as before stop 47). One JSON line per burst
(when its last reply came, how many got 200 and how many 503), then a ratio line for the largest burst.

    python benchmarks/serve_uploads.py                          # 100,000 rows, bursts of 1, 8, 32 and 64
    python benchmarks/serve_uploads.py --rows 1000000 --bursts 1,8

The index is `lite` over the sample gallery, filled up to --rows with random unit vectors under made-up paths
(inserted with SQL); the server embeds each upload with `lite` (torch). Disk: about 2 x rows x 384 x 4 bytes, in a
temporary folder. Both servers run one after the other on loopback, each on a copy of the same index.
"""

import argparse
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402

# the server, with the merge fraction set first (the peer's 0: every commit rewrites vectors.faiss)
_SERVE = "import sys; from polymodal.index import delta; delta.MERGE_FRACTION = float(sys.argv[1]); " \
         "from polymodal.cli import main; sys.exit(main(sys.argv[2:]))"


def build(db: Path, rows: int) -> int:
    """The sample gallery indexed with lite, then filled with synthetic rows up to `rows`; -> rows in the index."""
    import polymodal
    from polymodal.data.samples import write_sample_gallery
    from polymodal.index import ImageIndex

    gallery = db.parent / "gallery"
    write_sample_gallery(gallery)
    lite = polymodal.load("lite")
    ImageIndex(db).update(gallery, lite, progress=False)
    con = sqlite3.connect(db / "meta.sqlite", isolation_level=None)
    have = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    rng = np.random.default_rng(1)
    con.execute("BEGIN")
    for start in range(0, max(0, rows - have), 50_000):
        n = min(50_000, rows - have - start)
        v = rng.standard_normal((n, lite.dim)).astype("<f4")
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        con.executemany("INSERT INTO images (path, size, mtime_ns, sha256, vector, ctime_ns) VALUES (?, 1, 1, ?, ?, 1)",
                        ((f"/synthetic/{start + i:08d}.jpg", f"{start + i:064x}", v[i].tobytes()) for i in range(n)))
    con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    con.execute("COMMIT")
    con.close()
    ImageIndex(db).update(gallery, lite, progress=False)  # the writer writes vectors.faiss of every row, as a real
    return len(ImageIndex(db))  # `polymodal index` run ends: no upload below pays for the SQL-made rows


def jpeg(seed: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def serve(db: Path, merge_fraction: float, log) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(merge_fraction), "serve", "--model", "lite", "--db",
                             str(db), "--runtime", "torch", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=log)
    line = proc.stdout.readline().decode()  # printed once the server accepts requests
    found = re.search(r"on (http://\S+) ", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start ({line.strip() or 'no output'}); see {log.name}")
    return proc, found.group(1)


def burst(url: str, size: int, seed: int) -> dict:
    import httpx

    t0 = time.perf_counter()

    def upload(i: int) -> tuple[int, float]:
        r = httpx.post(url + "/v1/index", files={"image": (f"u{i}.jpg", jpeg(seed + i), "image/jpeg")}, timeout=600)
        return r.status_code, time.perf_counter() - t0

    with ThreadPoolExecutor(size) as pool:
        replies = list(pool.map(upload, range(size)))
    return {"burst": size, "last_reply_s": round(max(t for _, t in replies), 2),
            "ok": sum(s == 200 for s, _ in replies), "503": sum(s == 503 for s, _ in replies),
            "other": sorted({s for s, _ in replies} - {200, 503})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--bursts", default="1,8,32,64", help="uploads sent at once, comma-separated")
    args = ap.parse_args(argv)
    try:
        bursts = [int(b) for b in args.bursts.split(",")]
    except ValueError:
        bursts = []
    if not bursts or min(bursts) < 1 or args.rows < 1:
        print(f"error: --bursts takes counts >= 1 (got {args.bursts!r}) and --rows a count >= 1", file=sys.stderr)
        return 2
    announce(__file__, rows=args.rows, bursts=bursts)
    work = Path(tempfile.mkdtemp(prefix="serve_uploads-"))
    last = {}
    try:
        rows = build(work / "base" / "db", args.rows)
        for name, fraction in (("delta", 0.05), ("whole", 0.0)):
            db = work / name / "db"
            shutil.copytree(work / "base" / "db", db)
            with open(work / f"{name}.log", "wb") as log:
                proc, url = serve(db, fraction, log)
                try:
                    for n, size in enumerate(bursts):
                        line = {"vectors_file": name, "rows": rows, **burst(url, size, 1_000 * (n + 1))}
                        print(json.dumps(line), flush=True)
                        last[name] = line
                finally:
                    proc.terminate()
                    proc.wait(60)
        print(json.dumps({"burst": bursts[-1], "last_reply_whole/delta":
                          round(last["whole"]["last_reply_s"] / max(last["delta"]["last_reply_s"], 1e-9), 2)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
