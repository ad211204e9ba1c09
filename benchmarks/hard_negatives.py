"""Does training with hard-negative captions (NegCLIP word swaps) teach word order, and what does it cost?

Trains the shipped `default` recipe (recipes/default.json) on 80% of the Flickr8k dev photos (+ COCO-mini) once
per --hard-negatives mode, then measures on the other 20% of the photos, whose captions were never trained on:
- retrieval: Recall@1/5/10 both ways and rsum over the held-out photos and all their captions;
- word order (polymodal.eval.word_order, as ARO's Flickr-Order): each held-out photo's first caption against 4
  scrambled copies of it; accuracy = share of photos whose own caption scores highest (chance 0.2). Kinds: `swap`
  (two content words exchanged: the kind "swap" trains on, other captions and seed), and three kinds it never
  trains on: `trigrams` (word trigrams reordered), `within` (words reordered inside each trigram), `shuffle`.

    python benchmarks/hard_negatives.py [--modes none swap] [--text-layers 0 [--tower-lr-scale 0.01]] [--epochs 10]
Prints one JSON line per mode; tower features are cached, so the second mode trains in seconds.
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


ROOT = Path(__file__).resolve().parents[1]


def _write(pairs, path: Path) -> Path:
    with path.open("w") as f:
        for p in pairs:
            f.write(json.dumps({"image": str(p.image), "caption": p.caption}) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["none", "swap"], choices=["none", "swap"])
    ap.add_argument("--text-layers", type=int, default=0, help="unfreeze the last N text layers (0: frozen text)")
    ap.add_argument("--image-blocks", type=int, default=0, help="unfreeze the last N image blocks")
    ap.add_argument("--tower-lr-scale", type=float, default=None, help="lr of unfrozen tower layers relative to lr")
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--views", type=int, default=None, help="cached image views (default: the recipe's)")
    args = ap.parse_args(argv)
    announce(__file__)

    from polymodal.data.pairs import PairSet, read_pair_source, split_by_image

    flickr = SHARED_DATA / "flickr8k-dev" / "pairs.jsonl"
    if not flickr.is_file():
        print(f"needs the Flickr8k dev pairs at {flickr} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    train_set, held_out = split_by_image(read_pair_source(flickr), 0.2, seed=0)
    coco = SHARED_DATA / "coco-mini-train" / "pairs.jsonl"
    if coco.is_file():
        train_set = PairSet.from_pairs(train_set.pairs + read_pair_source(coco).pairs)
    first_caption = [held_out.captions_of(i)[0] for i in range(len(held_out.images))]
    with tempfile.TemporaryDirectory(prefix="hard-negatives-") as work:  # each mode's run: removed when it ends
        return _train_modes(args, train_set, held_out, first_caption, Path(work))


def _train_modes(args, train_set, held_out, first_caption: list[str], work: Path) -> int:
    from polymodal.eval.retrieval import retrieval_metrics
    from polymodal.eval.word_order import word_order_accuracy
    from polymodal.models.dual_encoder import load_dual_encoder
    from polymodal.train.contrastive import ContrastiveRecipe, train_contrastive

    train_file = _write(train_set.pairs, work / "train.jsonl")
    settings = json.loads((ROOT / "recipes" / "default.json").read_text())
    settings["arch"]["text_trainable_layers"] = args.text_layers
    settings["arch"]["image_trainable_blocks"] = args.image_blocks
    if args.tower_lr_scale is not None:
        settings["train"]["tower_lr_scale"] = args.tower_lr_scale
    if args.epochs:
        settings["train"]["epochs"] = args.epochs
    if args.views:
        settings["views"] = args.views
    for mode in args.modes:
        recipe = ContrastiveRecipe.from_dict({**settings, "pairs": [str(train_file)], "out": str(work / mode),
                                              "val_fraction": 0.0, "hard_negatives": mode})
        t0 = time.perf_counter()
        train_contrastive(recipe, progress=False)
        seconds = time.perf_counter() - t0
        model = load_dual_encoder(work / mode / "model")
        metrics = retrieval_metrics(model.encode_image(held_out.images), model.encode_text(held_out.captions),
                                    held_out.caption_image)
        line = {"hard_negatives": mode, "text_layers": args.text_layers, "image_blocks": args.image_blocks, "tower_lr_scale": recipe.train.tower_lr_scale,
                "epochs": recipe.train.epochs,
                "train_images": len(train_set.images), "held_out_images": len(held_out.images),
                "train_s": round(seconds, 1),
                "rsum": round(sum(v for k, v in metrics.items() if "R@" in k), 4),
                **{k: round(v, 4) for k, v in metrics.items() if "R@" in k}}
        order = word_order_accuracy(model, held_out.images, first_caption,
                                    other_captions=[held_out.captions_of(i) for i in range(len(held_out.images))])
        line.update({k: round(v, 4) for k, v in order.items() if not k.endswith("_n")})
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
