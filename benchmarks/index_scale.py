"""The local image index at the sizes users reach (100k-1M photos): seconds and peak RSS of each operation, each in a
fresh process (so the peak is that operation's), against faiss and numpy doing the same search directly; one JSON
line per operation.

    python benchmarks/index_scale.py --rows 100000                 # rows added by update() of tiny files
    python benchmarks/index_scale.py --rows 1000000 --dim 256 --synthetic   # rows written into SQLite directly

The model is a stand-in returning random unit vectors (nothing decoded). Without --synthetic the rows come from
`ImageIndex.update` of a folder of few-byte files (so the re-scan of the unchanged folder is measured too); with it,
an index is made by update() of one file and the rest of the rows are inserted with SQL under synthetic paths
(vectors.faiss then rebuilt by the first search, as after an interrupted update). Disk: about 2 x rows x dim x 4
bytes, in a temporary folder (--keep DIR keeps it there).

Steps ending in `_whole` are the peer for the writer's delta (polymodal/index/delta.py): the same operation with
MERGE_FRACTION 0, so that vectors.faiss is read and rewritten whole on every commit, as before stop 47.
`served_adds` is what `polymodal serve` does with uploads: one process, a search, then 10 x (add one photo, search).
`search_loop_huge_pages` opens the index as `serve` does (huge_pages=True): `moved_s` is the wait for its vectors to
move onto 2 MB pages (index/pages.py), after which the queries are timed as in `search_loop`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402


class RandomVectors:
    """What ImageIndex needs of a model, with random unit vectors for any path (nothing decoded)."""

    key, name, version = "bench-random", "bench-random", "1"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.rng = np.random.default_rng(0)

    def encode_image(self, paths, batch_size: int = 32) -> np.ndarray:
        v = self.rng.standard_normal((len(paths), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    encode_text = encode_image  # the index checks the model embeds both


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss keeps the parent's peak across fork, hiding a small step's)."""
    try:
        with open("/proc/self/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024, 1)
    except (OSError, StopIteration):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _folder_mb(db: Path) -> float:
    return round(sum(p.stat().st_size for p in db.iterdir() if p.is_file()) / 2**20, 1)


# -- steps, each run in its own process ------------------------------------------------------------------------
def step(name: str, db: Path, photos: Path, dim: int, queries: int) -> dict:
    from polymodal.index import ImageIndex, delta, snapshot

    label = name  # the step as printed, peers' suffixes included
    if name.endswith("_whole"):  # the peer: every commit rewrites vectors.faiss
        delta.MERGE_FRACTION, name = 0.0, name.removesuffix("_whole")
    if name.endswith("_copy"):  # the peer: a removal compacts a copy of the cached index at once
        snapshot.HIDE_AT_MOST, name = 0, name.removesuffix("_copy")
    index = ImageIndex(db)
    model = RandomVectors(dim)
    q = RandomVectors(dim).encode_text(["q"] * queries)
    base = _peak_mb()  # interpreter, numpy, faiss
    t0 = time.perf_counter()
    out: dict = {}
    if name == "info":
        out["count"] = index.info()["count"]
    elif name in ("first_search", "search_k10"):  # one CLI search: open (load or rebuild the FAISS file) + 1 query
        index.search(q[:1], 10)
    elif name in ("search_loop", "search_loop_huge_pages"):  # repeated searches in one process: per-query ms after
        # the first; huge_pages as `serve` opens its index: the first search's vectors move onto 2 MB pages meanwhile
        if name == "search_loop_huge_pages":
            index = ImageIndex(db, huge_pages=True)
        index.search(q[:1], 10)
        out["open_s"] = round(time.perf_counter() - t0, 2)
        for thread in threading.enumerate():
            if thread.name == "polymodal-huge-pages":
                t = time.perf_counter()
                thread.join()
                out["moved_s"] = round(time.perf_counter() - t, 2)
        for k in (10, 1000):
            t = time.perf_counter()
            for row in q:
                index.search(row, k)
            out[f"ms_per_query_k{k}"] = round((time.perf_counter() - t) / len(q) * 1000, 2)
    elif name == "rescan":  # update() of the unchanged folder
        report = index.update(photos, model, progress=False)
        out["report"] = report.summary()
    elif name == "remove_1":
        with index._reading() as (con, _):
            first = con.execute("SELECT id FROM images LIMIT 1").fetchone()[0]
        out["removed"] = len(index.remove_ids([first]))
    elif name == "remove_10k":
        with index._reading() as (con, _):
            ids = [r[0] for r in con.execute("SELECT id FROM images LIMIT 10000")]
        out["removed"] = len(index.remove_ids(ids))
    elif name in ("first_write", "add_1"):  # what one upload to `serve` costs the index (same writer path as update)
        # first_write: rows inserted with SQL (--synthetic) or by a reader's write-back are news to the writer, whose
        # first commit writes vectors.faiss once, as after any interrupted update
        out["report"] = _add_one(index, photos, model).summary()
    elif name == "served_adds":  # one process, as `serve`: its cache is caught up after each add
        index.search(q[:1], 10)
        adds, searches = [], []
        for _ in range(10):
            t = time.perf_counter()
            _add_one(index, photos, model)
            adds.append(time.perf_counter() - t)
            t = time.perf_counter()
            index.search(q[:1], 10)
            searches.append(time.perf_counter() - t)
        out["add_median_s"], out["add_max_s"] = round(float(np.median(adds)), 3), round(max(adds), 3)
        out["search_after_add_median_s"] = round(float(np.median(searches)), 4)
    elif name == "served_removes":  # one process, as `serve`: 10 removals of rows its cached index holds
        index.search(q[:1], 10)
        with index._reading() as (con, _):
            ids = [r[0] for r in con.execute("SELECT id FROM images ORDER BY id LIMIT 10")]
        removes, searches = [], []
        for i in ids:
            t = time.perf_counter()
            index.remove_ids([i])
            removes.append(time.perf_counter() - t)
            t = time.perf_counter()
            for row in q:
                index.search(row, 10)
            searches.append((time.perf_counter() - t) / len(q))
        out["remove_median_s"], out["remove_max_s"] = round(float(np.median(removes)), 3), round(max(removes), 3)
        out["ms_per_query_k10_after"] = round(float(np.median(searches)) * 1000, 2)
    elif name == "faiss_direct":  # baseline: faiss.read_index + the same queries
        import faiss

        index_f = faiss.read_index(str(db / "vectors.faiss"))
        t1 = time.perf_counter()
        for k in (10, 1000):
            t = time.perf_counter()
            for row in q:
                index_f.search(row[None], k)
            out[f"ms_per_query_k{k}"] = round((time.perf_counter() - t) / len(q) * 1000, 2)
        out["open_s"] = round(t1 - t0, 2)
    elif name == "numpy_direct":  # baseline: a [N, D] matrix and argpartition
        import faiss

        idmap = faiss.read_index(str(db / "vectors.faiss"))  # owns its flat index: kept until the copy is made
        flat = faiss.downcast_index(idmap.index)
        x = faiss.vector_to_array(flat.codes).view(np.float32).reshape(flat.ntotal, flat.d)
        del flat, idmap
        t1 = time.perf_counter()
        for k in (10, 1000):
            t = time.perf_counter()
            for row in q:
                s = x @ row
                top = np.argpartition(-s, min(k, len(s) - 1))[:k]
                top[np.argsort(-s[top])]
            out[f"ms_per_query_k{k}"] = round((time.perf_counter() - t) / len(q) * 1000, 2)
        out["open_s"] = round(t1 - t0, 2)
    else:
        raise SystemExit(f"unknown step {name}")
    out.update(step=label, seconds=round(time.perf_counter() - t0, 2), peak_rss_mb=_peak_mb(), base_rss_mb=base)
    return out


def _add_one(index, photos: Path, model):
    one = photos.parent / "one"
    one.mkdir(exist_ok=True)
    new = one / f"new-{time.time_ns()}.jpg"
    new.write_bytes(os.urandom(64))
    return index.add([new], model, progress=False)


# -- building ---------------------------------------------------------------------------------------------------
def build_real(photos: Path, db: Path, rows: int, dim: int) -> dict:
    from polymodal.index import ImageIndex

    photos.mkdir(parents=True, exist_ok=True)
    for i in range(rows):  # 1,000 files a folder, as a camera's DCIM folders
        sub = photos / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(exist_ok=True)
        (sub / f"{i:07d}.jpg").write_bytes(f"photo {i}".encode())
    t0 = time.perf_counter()
    report = ImageIndex(db).update(photos, RandomVectors(dim), progress=False, batch_size=256)
    return {"step": "build_update", "rows": rows, "seconds": round(time.perf_counter() - t0, 2),
            "report": report.summary(), "peak_rss_mb": _peak_mb()}


def build_synthetic(photos: Path, db: Path, rows: int, dim: int) -> dict:
    from polymodal.index import ImageIndex

    photos.mkdir(parents=True, exist_ok=True)
    (photos / "seed.jpg").write_bytes(b"seed")
    t0 = time.perf_counter()
    ImageIndex(db).update(photos, RandomVectors(dim), progress=False)
    rng = np.random.default_rng(1)
    con = sqlite3.connect(db / "meta.sqlite", isolation_level=None)
    con.execute("BEGIN")
    for start in range(0, rows - 1, 50_000):
        n = min(50_000, rows - 1 - start)
        v = rng.standard_normal((n, dim)).astype("<f4")
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        con.executemany("INSERT INTO images (path, size, mtime_ns, sha256, vector, ctime_ns) VALUES (?, ?, ?, ?, ?, ?)",
                        ((f"/synthetic/{(start + i) // 1000:04d}/{start + i:07d}.jpg", 1000, 1, f"{start + i:064x}",
                          v[i].tobytes(), 1) for i in range(n)))
    con.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    con.execute("COMMIT")
    con.close()
    return {"step": "build_synthetic", "rows": rows, "seconds": round(time.perf_counter() - t0, 2)}


def run_step(name: str, work: Path, dim: int, queries: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--step", name, "--work", str(work), "--dim", str(dim),
                           "--queries", str(queries)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"step {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--synthetic", action="store_true", help="insert rows with SQL instead of update() of files")
    ap.add_argument("--keep", help="build in this folder and leave it (default: a temporary folder)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:
        work = Path(args.work)
        print(json.dumps(step(args.step, work / "db", work / "photos", args.dim, args.queries)), flush=True)
        return 0
    announce(__file__, rows=args.rows, dim=args.dim)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="index_scale-"))
    try:
        build = build_synthetic if args.synthetic else build_real
        print(json.dumps(build(work / "photos", work / "db", args.rows, args.dim)), flush=True)
        vectors_mb = round(args.rows * args.dim * 4 / 2**20, 1)
        steps = ["info", "first_search", "search_k10", "search_loop", "search_loop_huge_pages", "faiss_direct",
                 "numpy_direct"]
        steps += ([] if args.synthetic else ["rescan"]) + ["first_write", "add_1", "remove_1", "served_adds",
                                                           "search_k10"]
        steps += ["add_1_whole", "remove_1_whole", "served_adds_whole", "served_removes", "served_removes_copy",
                  "remove_10k"]
        for name in steps:
            line = run_step(name, work, args.dim, args.queries)
            line["vectors_mb"] = vectors_mb
            print(json.dumps(line), flush=True)
        print(json.dumps({"step": "disk", "index_folder_mb": _folder_mb(work / "db"), "vectors_mb": vectors_mb,
                          "files": sorted(p.name for p in (work / "db").iterdir())}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
