"""Text->image and image->text Recall@1/5/10 and median rank of a model over a JSONL of image-caption pairs.

    python benchmarks/retrieval.py --pairs ../shared/data/flickr8k-dev/pairs.jsonl --model lite

Prints one JSON line.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import polymodal
from polymodal.errors import PolymodalError
from polymodal.eval.retrieval import read_pairs, retrieval_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True, help="JSONL of {\"image\": path relative to the file, \"caption\": text}")
    ap.add_argument("--model", default="lite", help="built-in name or checkpoint path")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    announce(__file__)
    try:
        pairs = read_pairs(args.pairs)
        model = polymodal.load(args.model)
        t0 = time.perf_counter()
        img = model.encode_image(pairs.images, batch_size=args.batch_size)
        txt = model.encode_text(pairs.captions)
        seconds = time.perf_counter() - t0
    except PolymodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = {"model": args.model, "pairs": args.pairs, "images": len(pairs.images), "captions": len(pairs.captions)}
    out.update(retrieval_metrics(img, txt, pairs.caption_image))
    out["encode_seconds"] = round(seconds, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
