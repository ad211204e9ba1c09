"""Training samples/s at batch 256: polymodal's cached-feature training vs a plain PyTorch loop without caching.

Two set-ups over the same model (lite towers + linear heads), each timed in the same run two ways:
  heads_*      heads only trained
  partial_*    last 2 image blocks + heads trained
  *_cached     tower features (or trunk activations) read from polymodal's feature cache
  *_plain      the usual loop: every step runs the frozen towers on the batch again
Prints one JSON line per measurement and a final line with the cached/plain speed-ups.

    python benchmarks/train_throughput.py [--batch 256] [--steps 3]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from polymodal.data.samples import sample_photos  # noqa: E402
from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig  # noqa: E402
from polymodal.train.features import image_features, text_features  # noqa: E402
from polymodal.train.objectives import ContrastiveObjective  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402

CAPTIONS = ["a dog runs on the beach", "two children play football", "a man rides a bike", "food on a table"]


def _rate(model, make_batch, objective, steps: int, batch: int) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    objective.backward(model, make_batch())  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        objective.backward(model, make_batch())
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    announce(__file__)
    photos = [arr for arr, _ in sample_photos().values()]
    images = [photos[i % len(photos)] for i in range(args.batch)]
    texts = [f"{CAPTIONS[i % 4]} ({i})" for i in range(args.batch)]
    objective = ContrastiveObjective()
    results = {}
    for kind, cfg in (("heads", DualEncoderConfig()), ("partial", DualEncoderConfig(image_trainable_blocks=2))):
        model = DualEncoder(cfg).train()
        feats = torch.from_numpy(np.array(image_features(model, images, progress=False)[0], np.float32))
        tfeats = torch.from_numpy(np.array(text_features(model, texts, progress=False), np.float32))
        results[f"{kind}_cached"] = _rate(model, lambda: (feats, tfeats), objective, args.steps, args.batch)
        pixels = torch.from_numpy(model.transform(images))

        def plain_batch(model=model, pixels=pixels):  # a loop without caching runs the frozen towers every step
            with torch.no_grad():
                return model.image_cache_input(pixels), model.text_tower(texts)

        results[f"{kind}_plain"] = _rate(model, plain_batch, objective, 1, args.batch)
    for name, rate in results.items():
        print(json.dumps({"setup": name, "batch": args.batch, "samples_per_s": round(rate, 1)}))
    print(json.dumps({"speedup_cached_vs_plain": {k: round(results[f"{k}_cached"] / results[f"{k}_plain"], 1)
                                                  for k in ("heads", "partial")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
