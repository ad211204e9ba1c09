"""Pushing an index to Qdrant and searching it there, beside the local index; one JSON line per figure.

    python benchmarks/qdrant_push.py                                  # Qdrant's embedded local mode, in a temp folder
    python benchmarks/qdrant_push.py --qdrant http://localhost:6333   # a server (collection polymodal-bench, replaced)
    python benchmarks/qdrant_push.py --images 50000 --dim 512

The index holds --images tiny generated photos whose vectors are random unit vectors (a stand-in model: what is
measured is moving and searching vectors, not embedding them). Figures: the first push (rows/s), a push with
nothing to do (the id scroll and diff every push pays), a push after 1% of the rows changed, search latency per
query against the local FAISS index (ratio), and recall@10 of the collection's answers against FAISS's exact ones
(1.0 in local mode, which searches exactly; a server's HNSW answers approximately).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from polymodal.data.images import ImageTransform
from polymodal.index import ImageIndex
from polymodal.errors import PolymodalError
from polymodal.index.qdrant import NEEDS_EXTRA, QdrantCollection
from polymodal.models.base import EmbeddingModel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402


class RandomVectors(EmbeddingModel):
    """A unit vector per photo, seeded by its pixels (generated photos differ), so re-runs embed alike."""

    name, version = "random-vectors", "1"
    transform = ImageTransform(resize=4, crop=4, resample="bilinear")

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def _image_batch(self, pixels):
        import torch

        out = [np.random.default_rng(int(hashlib.sha1(p.numpy().tobytes()).hexdigest()[:12], 16)).standard_normal(self.dim)
               for p in pixels]
        return torch.from_numpy(np.stack(out).astype(np.float32))


def photos(folder: Path, count: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):  # a 4x4 photo whose pixels spell its number: distinct bytes each
        raw = np.frombuffer(i.to_bytes(48, "little"), np.uint8).reshape(4, 4, 3)
        Image.fromarray(raw).save(folder / f"{i:07d}.png")


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--qdrant", help="a server URL; default: Qdrant's local mode in a temp folder")
    args = ap.parse_args(argv)
    announce(__file__)
    try:
        import qdrant_client  # noqa: F401
    except ImportError:
        print(f"error: {NEEDS_EXTRA}", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except PolymodalError as exc:  # e.g. no server at --qdrant
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = RandomVectors(args.dim)
        photos(tmp / "photos", args.images)
        index = ImageIndex(tmp / "db")
        _, seconds = timed(lambda: index.update(tmp / "photos", model, progress=False))
        emit(name="local index built", images=args.images, dim=args.dim, seconds=round(seconds, 2))
        target = args.qdrant or str(tmp / "qdrant")
        collection = QdrantCollection(target, "polymodal-bench")
        if args.qdrant and collection.exists():
            collection._client_().delete_collection(collection.collection)
        mode = "server" if args.qdrant else "local mode"
        report, seconds = timed(lambda: collection.push(index, progress=False))
        emit(name=f"first push ({mode})", added=report.added, seconds=round(seconds, 2),
             rows_per_s=round(report.added / seconds, 1))
        report, seconds = timed(lambda: collection.push(index, progress=False))
        emit(name=f"push with nothing to do ({mode})", unchanged=report.unchanged, seconds=round(seconds, 2))
        changed = max(1, args.images // 100)
        for p in sorted((tmp / "photos").iterdir())[:changed]:
            p.unlink()
        photos(tmp / "photos", changed, start=args.images)
        index.update(tmp / "photos", model, progress=False)
        report, seconds = timed(lambda: collection.push(index, progress=False))
        emit(name=f"push after 1% changed ({mode})", added=report.added, removed=report.removed,
             seconds=round(seconds, 2))
        queries = np.random.default_rng(1).standard_normal((args.queries, args.dim)).astype(np.float32)
        index.search(queries[:1], 10)  # warm: FAISS loaded
        collection.search(queries[:1], 10)
        exact, local_s = timed(lambda: [index.search(q, 10)[0] for q in queries])
        got, remote_s = timed(lambda: [collection.search(q, 10)[0] for q in queries])
        recall = np.mean([len({h.path for h in a} & {h.path for h in b}) / 10 for a, b in zip(exact, got)])
        emit(name="search, one query at a time, k=10", local_faiss_ms=round(1000 * local_s / args.queries, 3),
             qdrant_ms=round(1000 * remote_s / args.queries, 3), qdrant_over_faiss=round(remote_s / local_s, 2),
             mode=mode)
        emit(name=f"recall@10 of the collection against FAISS's exact answers ({mode})", recall=round(float(recall), 4))
        if args.qdrant:
            collection._client_().delete_collection(collection.collection)
    return 0


if __name__ == "__main__":
    sys.exit(main())
