"""`ImageIndex.update` of a folder whose every file changed in place (edited photos, a re-export): seconds for the
index's own work, with the old vectors leaving FAISS once per commit (the code) against once per 32-file batch (the
peer, as before stop 44); one JSON line per run and a ratio line.

    python benchmarks/index_changed_files.py                  # 20,000 files
    python benchmarks/index_changed_files.py --files 100000 --repeats 2

The model is a stand-in that returns random vectors without decoding, so the figure is the index's bookkeeping
(scan, hash, SQLite, FAISS), not embedding; files are a few bytes each. Runs alternate (code, peer, code, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402


class RandomVectors:
    """What ImageIndex needs of a model, with random unit vectors for any path (nothing decoded)."""

    key, name, version, dim = "bench-random", "bench-random", "1", 512

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def encode_image(self, paths, batch_size: int = 32) -> np.ndarray:
        v = self.rng.standard_normal((len(paths), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    encode_text = encode_image  # the index checks the model embeds both


def write_files(folder: Path, n: int, version: int) -> None:
    for i in range(n):
        (folder / f"{i:06d}.jpg").write_bytes(f"photo {i} version {version}".encode())


def run(folder: Path, db: Path, per_batch: bool) -> dict:
    from polymodal.index import store

    model = RandomVectors()
    n = len(list(folder.iterdir()))
    write_files(folder, n, version=1)
    index = store.ImageIndex(db)
    index.update(folder, model, progress=False, commit_every_s=None)
    write_files(folder, n, version=22)  # other bytes and size: every file is re-embedded, its old row replaced
    original = store.ImageIndex._embed_batch
    if per_batch:  # the peer: FAISS compacts once per batch, as before
        def embed_batch(self, con, index, model, batch, report, reuse, stale):
            original(self, con, index, model, batch, report, reuse, stale)
            store._remove_vectors(index, stale)
        store.ImageIndex._embed_batch = embed_batch
    try:
        t0 = time.perf_counter()
        report = index.update(folder, model, progress=False, commit_every_s=None)
        seconds = time.perf_counter() - t0
    finally:
        store.ImageIndex._embed_batch = original
    if report.updated != n or len(index) != n:
        raise SystemExit(f"expected {n} updated rows, got {report.updated} (index holds {len(index)})")
    return {"removal": "per batch" if per_batch else "per commit", "files": n, "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    announce(__file__, files=args.files)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        write_files(folder, args.files, version=0)
        for r in range(args.repeats):
            for per_batch in (False, True):
                line = run(folder, Path(tmp) / f"db-{r}-{int(per_batch)}", per_batch)
                seconds[per_batch].append(line["seconds"])
                print(json.dumps(line), flush=True)
    ratio = min(seconds[True]) / max(min(seconds[False]), 1e-9)
    print(json.dumps({"metric": "per-batch seconds / per-commit seconds", "ratio": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
