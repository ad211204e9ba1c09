"""encode_text's batches cut in order of text length against batches in the caller's order (each batch is padded to
its longest text): CPU seconds per pass and the largest difference between the two results, one JSON line per
pass and a ratio line.

    python benchmarks/text_batching.py                      # 640 Flickr8k dev captions, `lite`
    python benchmarks/text_batching.py --captions 2000 --model default --runtime onnx

The caller's order is what a model with `texts_batch_independent = False` gets (an int8 text graph), so both
sides run the same model; passes alternate. CPU seconds (time.process_time), not wall time, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # (see benchmarks/omp_wait_policy.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import SHARED_DATA, announce  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=Path, default=SHARED_DATA / "flickr8k-dev" / "pairs.jsonl")
    ap.add_argument("--captions", type=int, default=640)
    ap.add_argument("--model", default="lite")
    ap.add_argument("--runtime", default="torch", choices=("torch", "onnx"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.pairs.is_file():
        print(f"error: no pairs file at {args.pairs}; pass --pairs FILE.jsonl", file=sys.stderr)
        return 2
    if args.captions < 1 or args.repeats < 1:
        print("error: --captions and --repeats must be at least 1", file=sys.stderr)
        return 2
    import numpy as np

    import polymodal
    from polymodal.errors import PolymodalError

    announce(__file__)
    rows = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [row["caption"] for row in rows if isinstance(row.get("caption"), str)][: args.captions]
    try:
        model = polymodal.load(args.model, runtime=args.runtime)
    except PolymodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.encode_text(texts[:8])  # warm up: first-call costs on neither side
    seconds: dict[bool, list[float]] = {True: [], False: []}
    results = {}
    for r in range(args.repeats):
        for by_length in (True, False):
            model.texts_batch_independent = by_length  # False: batches in the caller's order, as before
            t0 = time.process_time()
            results[by_length] = model.encode_text(texts)
            seconds[by_length].append(time.process_time() - t0)
            print(json.dumps({"batches": "by length" if by_length else "in order", "repeat": r,
                              "captions": len(texts), "cpu_s": round(seconds[by_length][-1], 3)}), flush=True)
    diff = float(np.abs(results[True] - results[False]).max())
    ratio = statistics.median(seconds[False]) / statistics.median(seconds[True])
    print(json.dumps({"model": args.model, "runtime": args.runtime, "in_order_over_by_length": round(ratio, 3),
                      "max_abs_diff": diff}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
