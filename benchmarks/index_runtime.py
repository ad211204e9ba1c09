"""`polymodal index` with --runtime torch vs onnx: images/s end to end (decode, preprocess, embed, write), and how
alike the two indexes answer; one JSON line per run and a ratio line.

    python benchmarks/index_runtime.py                                   # ../shared/data/flickr8k-dev/images
    python benchmarks/index_runtime.py --images ~/Pictures --model lite --repeats 2

Needs the model's export (`polymodal export onnx lite` writes it where --runtime onnx looks). Runs alternate
(torch, onnx, torch, ...) so a busy machine slows both alike; each builds a fresh index in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# idle OpenMP threads sleep unless the caller chose (ACTIVE on a quiet machine): spinning beside other jobs
# made speed ratios swing by several times (benchmarks/omp_wait_policy.py); OpenMP reads it when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import SHARED_DATA, announce  # noqa: E402

QUERIES = ["a dog running on the grass", "children playing in the water", "a man riding a bicycle",
           "a crowd of people in a city street", "a snowy mountain"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=SHARED_DATA / "flickr8k-dev" / "images")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    announce(__file__)
    import polymodal
    from polymodal.errors import PolymodalError
    from polymodal.index import ImageIndex

    if not args.images.is_dir():
        print(f"no image folder at {args.images}; pass --images DIR", file=sys.stderr)
        return 2
    try:
        models = {rt: polymodal.load(args.model, runtime=rt) for rt in ("torch", "onnx")}
    except PolymodalError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    rates: dict[str, list[float]] = {"torch": [], "onnx": []}
    answers: dict[str, list[list[str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for runtime, model in models.items():
                index = ImageIndex(Path(tmp) / f"{runtime}-{r}")
                t0 = time.perf_counter()
                try:
                    report = index.update(args.images, model, progress=False)
                except PolymodalError as exc:  # e.g. a folder without photos: its one line, not a traceback
                    print(f"{exc}", file=sys.stderr)
                    return 2
                seconds = time.perf_counter() - t0
                rates[runtime].append(report.added / seconds)
                print(json.dumps({"runtime": runtime, "images": report.added, "seconds": round(seconds, 1),
                                  "images_per_s": round(report.added / seconds, 1)}), flush=True)
                answers[runtime] = [[h.path for h in hits] for hits in index.search(model.encode_text(QUERIES), 10)]
    overlap = sum(len(set(a) & set(b)) for a, b in zip(answers["torch"], answers["onnx"])) / (10 * len(QUERIES))
    print(json.dumps({"name": "onnx / torch, images per second (mean of runs)",
                      "ratio": round(sum(rates["onnx"]) / sum(rates["torch"]), 2),
                      "top10_overlap_of_the_two_indexes": round(overlap, 3), "queries": len(QUERIES)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
