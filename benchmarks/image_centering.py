"""Does subtracting the mean photo embedding help a model's retrieval (a hubness check)?

An image embedding that shares a large direction with every other photo makes a few texts match everything (a
"hub": with `default`, "a cup of coffee" came first for a cat photo). Centering subtracts beta times the mean image
embedding of *other* photos (--ref-pairs, so nothing of the test set leaks in), renormalises, and ranks again.
Only the images move: the texts, the index and the model stay as they are.

    python benchmarks/image_centering.py --pairs ../shared/data/flickr8k-dev/pairs.jsonl \
        --ref-pairs ../shared/data/coco-mini-train/pairs.jsonl --models lite default

Prints one JSON line per model and beta (beta 0 = the model as shipped), with Recall@1/5/10 both ways.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import polymodal
from polymodal.errors import PolymodalError
from polymodal.eval.retrieval import read_pairs, retrieval_metrics
from polymodal.index.store import query_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402


def centered(image_emb: np.ndarray, mean: np.ndarray, beta: float) -> np.ndarray:
    """Rows minus beta x mean, L2-normalised again (as the index normalises its queries)."""
    return query_matrix(image_emb - beta * mean[None, :])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True, help="test pairs: JSONL of {\"image\", \"caption\"}")
    ap.add_argument("--ref-pairs", required=True, help="other photos, whose mean image embedding is subtracted")
    ap.add_argument("--models", nargs="+", default=["lite", "default"])
    ap.add_argument("--betas", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    announce(__file__)
    try:
        test, ref = read_pairs(args.pairs), read_pairs(args.ref_pairs)
        if set(map(str, test.images)) & set(map(str, ref.images)):
            raise PolymodalError("--pairs and --ref-pairs share photos; the mean must come from other photos")
        for name in args.models:
            model = polymodal.load(name)
            images = model.encode_image(test.images, batch_size=args.batch_size)
            texts = model.encode_text(test.captions)
            mean = model.encode_image(ref.images, batch_size=args.batch_size).mean(0)
            for beta in args.betas:
                out = {"model": name, "beta": beta, "images": len(test.images), "ref_images": len(ref.images)}
                out.update(retrieval_metrics(centered(images, mean, beta), texts, test.caption_image))
                print(json.dumps(out), flush=True)
    except PolymodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
