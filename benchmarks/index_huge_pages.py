"""Flat search over vectors on 2 MB pages (polymodal/index/pages.py) vs the same vectors as read, in one process.

    python benchmarks/index_huge_pages.py --rows 1000000 --dim 256

Writes a random IndexIDMap2(IndexFlatIP) file (in a temporary folder, or --keep DIR), reads it twice as the index
reads vectors.faiss, advises one copy, then times k=10 queries over the two copies in turn (the order alternates, so
that a busy machine slows both alike). A third copy made by faiss.clone_index of the first shows whether a fresh
buffer alone explains the difference. JSON lines: the read, the advice and each copy's per-query median and best.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # polymodal, run from a checkout
from run_context import announce  # noqa: E402


def _read(path: Path):
    import faiss

    with open(path, "rb") as f:  # as ImageIndex reads vectors.faiss
        return faiss.read_index(faiss.PyCallbackIOReader(f.read))


def _huge_pages_mb() -> float | None:
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages")) / 1024
    except (OSError, StopIteration):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=21, help="queries timed per copy")
    ap.add_argument("--keep", type=Path, help="write (or reuse) the file in this folder")
    args = ap.parse_args(argv)
    import faiss

    from polymodal.index.pages import advise_huge_pages

    faiss.omp_set_num_threads(1)
    announce(__file__)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="huge-pages-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"vectors-{args.rows}x{args.dim}.faiss"
    if not path.is_file():
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dim))
        rng = np.random.default_rng(0)
        for start in range(0, args.rows, 100_000):
            n = min(100_000, args.rows - start)
            index.add_with_ids(rng.standard_normal((n, args.dim), dtype=np.float32), np.arange(start, start + n) + 1)
        faiss.write_index(index, str(path))
        del index
    t = time.perf_counter()
    plain = _read(path)
    read_s = time.perf_counter() - t
    huge = _read(path)
    t = time.perf_counter()
    moved = advise_huge_pages(huge)
    advise_s = time.perf_counter() - t
    print(json.dumps({"rows": args.rows, "dim": args.dim, "mb": round(args.rows * args.dim * 4 / 2**20),
                      "read_s": round(read_s, 3), "advise_s": round(advise_s, 3), "moved": moved,
                      "huge_pages_mb": _huge_pages_mb()}))
    copies = {"as_read": plain, "huge_pages": huge, "clone_of_as_read": faiss.clone_index(plain)}
    q = np.random.default_rng(1).standard_normal((args.queries, args.dim), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in copies}
    for i in range(args.queries):
        for name in (list(copies) if i % 2 == 0 else list(copies)[::-1]):
            t = time.perf_counter()
            copies[name].search(q[i : i + 1], 10)
            times[name].append((time.perf_counter() - t) * 1000)
    ref = float(np.median(times["as_read"]))
    for name, ms in times.items():
        print(json.dumps({"copy": name, "query_ms_median": round(float(np.median(ms)), 1),
                          "query_ms_best": round(min(ms), 1), "x_as_read": round(ref / float(np.median(ms)), 2)}))
    if args.keep is None:
        os.unlink(path)
        os.rmdir(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
