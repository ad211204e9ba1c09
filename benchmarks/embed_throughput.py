"""Images/s and texts/s of a model at batch 1 and 32; one JSON line per measurement.

    python benchmarks/embed_throughput.py --model lite
"""

import argparse
import json
import sys
import time

import numpy as np

import polymodal
from polymodal.data.samples import sample_photos

SENTENCES = [
    "a dog runs along the beach",
    "two children play football in a park",
    "a man rides a bicycle down a busy street",
    "a plate of food on a wooden table",
]


def _rate(fn, items: list, batch: int, seconds: float) -> float:
    """Items per second, cycling through all items in chunks of `batch` (same inputs for every batch size)."""
    fn(items[:batch], batch)  # warm-up
    done, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        chunk = [items[(i + j) % len(items)] for j in range(batch)]
        fn(chunk, batch)
        done, i = done + batch, i + batch
    return done / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    ap.add_argument("--batches", default="1,32")
    args = ap.parse_args(argv)
    model = polymodal.load(args.model)
    photos = [arr for arr, _ in sample_photos().values()]
    images = [photos[i % len(photos)] for i in range(64)]
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(64)]
    for batch in (int(b) for b in args.batches.split(",")):
        for kind, items, fn in (
            ("images", images, lambda x, b: model.encode_image(x, batch_size=b)),
            ("texts", texts, lambda x, b: model.encode_text(x, batch_size=b)),
        ):
            rate = _rate(fn, items, batch, args.seconds)
            print(json.dumps({"model": args.model, "kind": kind, "batch": batch, f"{kind}_per_s": round(rate, 1)}))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
