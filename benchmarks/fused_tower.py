"""EfficientNet-Lite0 inference: the BatchNorm-folded copy (what fp32 inference runs) vs the eager module, same run.

    python benchmarks/fused_tower.py [--batches 1,8,32] [--threads 2]

One JSON line per batch size with images/s of the tower alone both ways and their ratio, then one line for `lite`
end to end (encode_image on the built-in sample photos: decoding and preprocessing included) and the largest
feature difference between the two. Compare ratios: these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# idle OpenMP threads sleep unless the caller chose (ACTIVE on a quiet machine): spinning beside other jobs
# made speed ratios swing by several times (benchmarks/omp_wait_policy.py); OpenMP reads it when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_context.py (tests load scripts by path)
from run_context import announce, counts  # noqa: E402


def _rate(fn, items: int, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += items
    return done / (time.perf_counter() - start)


def _paired(fns: dict, items: int, seconds: float, turns: int = 3) -> dict:
    """Best items/s of each function over `turns` alternating turns: load that comes and goes hits both alike."""
    for fn in fns.values():
        fn()  # warm-up (and the folded copy's build)
    best = dict.fromkeys(fns, 0.0)
    for _ in range(turns):
        for name, fn in fns.items():
            best[name] = max(best[name], _rate(fn, items, seconds / turns))
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=counts, default=[1, 8, 32], help="batch sizes, e.g. 1,8,32")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each measurement (3 alternating turns)")
    ap.add_argument("--photos", type=int, default=15, help="sample photos encoded end to end (at most 15)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    announce(__file__)

    import polymodal
    from polymodal.data.samples import sample_photos

    lite = polymodal.load("lite")
    tower = lite.image_tower
    x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager, fused = tower.net, tower._inference_net()  # the folded copy exists only where gradients are off
        assert fused is not eager
        diff = float((eager.extract_features(x[:8]) - fused.extract_features(x[:8])).abs().max())
        for batch in args.batches:
            chunk = x[:batch]
            rates = _paired({"eager": lambda c=chunk: eager.extract_features(c),
                             "fused": lambda c=chunk: fused.extract_features(c)}, batch, args.seconds)
            print(json.dumps({"tower": "efficientnet-lite0", "batch": batch, "threads": args.threads,
                              **{f"{k}_images_per_s": round(v, 1) for k, v in rates.items()},
                              "fused/eager": round(rates["fused"] / rates["eager"], 2),
                              "max_abs_feature_diff": diff}), flush=True)
    photos = [a for a, _ in sample_photos().values()][: args.photos]
    folded = type(tower)._inference_net.__get__(tower)

    def encode_with(net_of):
        def run():
            tower._inference_net = net_of
            lite.encode_image(photos)
        return run

    rates = _paired({"eager": encode_with(lambda: eager), "fused": encode_with(folded)}, len(photos), args.seconds)
    print(json.dumps({"model": "lite", "end_to_end": "encode_image of the sample photos", "photos": len(photos),
                      **{f"{k}_images_per_s": round(v, 1) for k, v in rates.items()},
                      "fused/eager": round(rates["fused"] / rates["eager"], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
