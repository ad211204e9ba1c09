"""What hiding removed ids costs a search (polymodal/index/snapshot.py): one FAISS index searched through snapshots
hiding 0, 10, 100 and 1,024 of its ids, in turns, in one process.

    python benchmarks/index_hidden_ids.py --rows 1000000 --dim 256

A removal of a row a served index holds hides its id instead of copying the index: each search then asks FAISS
for k + hidden hits and drops the hidden ones, until snapshot.HIDE_AT_MOST pile up and one copy compacts them. The
same index object serves every case, so where its vectors lie in memory (which moves a copy's searches by 10-20%,
see index_huge_pages.py) is the same for all. JSON lines: per-query median (ms) and each turn, per case and k.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # polymodal, run from a checkout
from run_context import announce  # noqa: E402

HIDDEN = (0, 10, 100, 1024)


def main(argv: list[str] | None = None) -> int:
    import faiss

    from polymodal.index.snapshot import HIDE_AT_MOST, Snapshot

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--turns", type=int, default=4)
    args = ap.parse_args(argv)
    if args.rows <= max(HIDDEN) or min(args.dim, args.queries, args.turns) < 1:
        raise SystemExit(f"--rows must be above {max(HIDDEN)}; --dim, --queries and --turns at least 1")
    announce(__file__, rows=args.rows, dim=args.dim, hide_at_most=HIDE_AT_MOST)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dim))
    for start in range(0, args.rows, 100_000):  # 100k rows at a time: memory stays near the index's own
        x = rng.standard_normal((min(100_000, args.rows - start), args.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        index.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))
    q = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    snaps = {h: Snapshot(("bench", 1, (0, 0)), index, args.rows,
                         hidden=np.sort(rng.choice(args.rows, h, replace=False)).astype(np.int64)) for h in HIDDEN}
    times: dict[tuple[int, int], list[float]] = {}
    for turn in range(args.turns):
        for h in HIDDEN if turn % 2 == 0 else HIDDEN[::-1]:  # the order alternates: a busy spell slows all alike
            for k in (10, 1000):
                t = time.perf_counter()
                for row in q:
                    snaps[h].search(row[None], k)
                times.setdefault((h, k), []).append((time.perf_counter() - t) / len(q) * 1000)
    for (h, k), turns in sorted(times.items()):
        base = float(np.median(times[(0, k)]))
        print(json.dumps({"bench": "index_hidden_ids", "hidden": h, "k": k,
                          "ms_per_query": round(float(np.median(turns)), 2),
                          "x_no_hidden": round(float(np.median(turns)) / base, 3),
                          "turns": [round(t, 2) for t in turns]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
