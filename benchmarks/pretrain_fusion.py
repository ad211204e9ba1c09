"""Fusion-encoder pretraining on Flickr8k-dev captions: does ITM tell matching captions from hard and from random
ones, and does MLM use the image?

    python benchmarks/pretrain_fusion.py                 # ../shared/data/flickr8k-dev: about 10 minutes on one CPU
    python benchmarks/pretrain_fusion.py --runs multitask,hard_only,random_negatives,text_only --epochs 4

10% of the images (with all their captions) are held out (`split_pairs_by_image`, seed 0); nothing about them is
seen in training. Runs (each `polymodal.train.pretrain.train_pretrain`, one JSON line each):

- multitask: ITM + MLM + MRM, half the ITM negatives hard (mined by the built-in "default" contrastive model), half
  uniform (the recipe's default hard_fraction 0.5);
- hard_only (not run by default): the same with every ITM negative hard;
- random_negatives (not run by default): the same with every ITM negative uniform;
- mlm_only: MLM alone, with the images;
- text_only: MLM alone with every image feature zeroed in training and evaluation (the text-only control: compare
  it with mlm_only, which trains the same steps of the same objective).

Held-out metrics, on the held-out split with negatives mined inside it: ITM pairwise accuracy (the matching pair
scores above its negative: chance 0.5) against hard negatives (the contrastive model's most similar other caption
for the image / other image for the caption) and against random ones, and ITM balanced accuracy at logit 0; MLM
accuracy on masked word pieces (the same masked copies for every run; also split into content and function words)
with the real images, with the images zeroed at evaluation, and for the text-only control. A last line summarises.

Measured (co_attention, dim 128, lr 2e-3, batch 64, one CPU thread; 4,500 training / 500 held-out captions):
ITM pairwise accuracy, hard caption / hard image / random caption / random image negatives (chance 0.5):
multitask 6 epochs 0.44 / 0.54 / 0.85 / 0.86; random_negatives 4 epochs 0.50 / 0.61 / 0.90 / 0.91; hard_only
5 epochs 0.51 / 0.52 / 0.48 / 0.46. The mined hard negatives are often as true as the image's own captions (the
contrastive model's recall@1 is about 0.3), so no run separates them. MLM accuracy, all / content words, 6 epochs:
mlm_only 0.207 / 0.095 vs text_only 0.208 / 0.070 (497 content pieces): the image helps on content words only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# idle OpenMP threads sleep unless the caller chose (ACTIVE on a quiet machine): spinning beside other jobs
# made speed ratios swing by several times (benchmarks/omp_wait_policy.py); OpenMP reads it when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import SHARED_DATA, announce  # noqa: E402

DEFAULT_PAIRS = SHARED_DATA / "flickr8k-dev" / "pairs.jsonl"


def itm_scores(model, data, hard: bool, seed: int = 0, batch_size: int = 128) -> dict:
    """Pairwise and balanced ITM accuracy of a model over every held-out caption with one negative caption for
    its image and one negative image for it (hard: mined; else uniform)."""
    import numpy as np
    import torch

    from polymodal.train.pretrain import CaptionRows

    rows = CaptionRows(data, "itm", seed, hard=1.0 if hard else 0.0)
    pos, neg_caption, neg_image = [], [], []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            batch = rows.collate(list(range(s, min(len(rows), s + batch_size))))
            logits = model.itm_logits(batch.images, batch.states, batch.mask, batch.row_image).numpy()
            a, b, c = np.split(logits, 3)
            pos.append(a), neg_caption.append(b), neg_image.append(c)
    pos, neg_caption, neg_image = (np.concatenate(x) for x in (pos, neg_caption, neg_image))
    kind = "hard" if hard else "random"
    return {
        f"itm_pairwise_{kind}_caption": float((pos > neg_caption).mean()),
        f"itm_pairwise_{kind}_image": float((pos > neg_image).mean()),
        f"itm_balanced_{kind}": float(0.5 * (pos > 0).mean() + 0.25 * ((neg_caption <= 0).mean() + (neg_image <= 0).mean())),
    }


# function words: MLM gets these from the sentence; the content words (nouns, verbs, colours) are where the image helps
FUNCTION_WORDS = set("a an the of in on at is are was with and to his her their its it while as by for from into "
                     "near there this that two one three four some other another over under up down out off".split())


def mlm_scores(model, data, zero_images: bool = False, batch_size: int = 128) -> dict:
    """MLM accuracy over every masked word piece of the held-out captions (masked copy 0), and separately over
    content and function words."""
    import numpy as np
    import torch

    from polymodal.train.pretrain import CaptionRows
    from polymodal.train.pretrain_objectives import IGNORE

    rows = CaptionRows(data, "mlm", 0, zero_images=zero_images)
    tok = model.text_tower.tokenizer
    hits, content = [], []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            batch = rows.collate(list(range(s, min(len(rows), s + batch_size))))
            positions = batch.mlm_targets != IGNORE
            logits = model.mlm_logits(batch.images, batch.states, batch.mask, positions, batch.row_image)
            targets = batch.mlm_targets[positions]
            hits += (logits.argmax(-1) == targets).tolist()
            content += [t.lstrip("#") not in FUNCTION_WORDS for t in tok.convert_ids_to_tokens(targets.tolist())]
    hits, content = np.asarray(hits, dtype=bool), np.asarray(content, dtype=bool)
    suffix = "_images_zeroed" if zero_images else ""
    return {f"mlm_accuracy{suffix}": float(hits.mean()), f"mlm_accuracy_content{suffix}": float(hits[content].mean()),
            f"mlm_accuracy_function{suffix}": float(hits[~content].mean()),
            **({} if zero_images else {"mlm_masked_pieces": int(len(hits)), "mlm_content_pieces": int(content.sum())})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default=str(DEFAULT_PAIRS))
    p.add_argument("--runs", default="multitask,mlm_only,text_only", help="any of multitask, hard_only, "
                   "random_negatives, mlm_only, text_only (with ITM about a minute per epoch on one CPU thread)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--fusion", default="co_attention")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--mlm-variants", type=int, default=2)
    p.add_argument("--out", help="run folders (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    announce(__file__)
    from polymodal.errors import PolymodalError
    from polymodal.models.fusion_encoder import load_fusion_encoder
    from polymodal.train.pretrain import (
        PretrainRecipe,
        encode_split,
        evaluate,
        evaluation_sets,
        load_miner,
        read_pairs,
        split_pairs_by_image,
        train_pretrain,
    )

    multitask = {"itm": 1.0, "mlm": 1.0, "mrm": 0.5}
    runs = {
        "multitask": {"objectives": multitask},  # half the ITM negatives hard (the default), half uniform
        "hard_only": {"objectives": multitask, "hard_fraction": 1.0},
        "random_negatives": {"objectives": multitask, "negatives": "random"},
        "mlm_only": {"objectives": {"mlm": 1.0}},
        "text_only": {"objectives": {"mlm": 1.0}, "zero_images": True},
    }
    wanted = [r for r in args.runs.split(",") if r]
    base = {"pairs": [args.pairs], "val_fraction": 0.1, "batch_size": args.batch_size, "mlm_variants": args.mlm_variants,
            "arch": {"fusion": args.fusion, "dim": args.dim, "dropout": 0.1},
            "train": {"epochs": args.epochs, "lr": args.lr, "warmup_steps": 30, "patience": 0, "seed": 0}}
    try:  # a mistake in the command line (a path, a run, a --fusion): one line and exit 2, as the other benchmarks
        if not Path(args.pairs).is_file():
            raise PolymodalError(f"no pairs at {args.pairs}; pass --pairs FILE.jsonl")
        if unknown := set(wanted) - set(runs):
            raise PolymodalError(f"unknown runs {sorted(unknown)}; choose from {', '.join(runs)}")
        for name in wanted:  # each run's settings, before the first one trains
            recipe = PretrainRecipe.from_dict({**base, **runs[name], "out": "unused"})
            recipe.validate()
            recipe.arch.validate()
    except PolymodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_root = Path(args.out or tempfile.mkdtemp(prefix="pretrain-fusion-"))

    t0 = time.perf_counter()
    held_out = None
    summary = {}
    for name in wanted:
        recipe = PretrainRecipe.from_dict({**base, **runs[name], "out": str(out_root / name)})
        objectives = dict(recipe.objectives)
        result = train_pretrain(recipe, progress=False, overwrite=True)  # a rerun replaces its own earlier runs
        model = load_fusion_encoder(out_root / name / "model")
        if held_out is None:  # the held-out split, features and mined negatives (all from the cache)
            _, val_pairs = split_pairs_by_image(read_pairs([args.pairs]), 0.1, 0)
            full = PretrainRecipe.from_dict({**base, "out": str(out_root / "eval")})
            held_out = encode_split(model, val_pairs, ["itm", "mlm", "mrm"], full, load_miner("default"), progress=False)
        metrics = {}
        if "itm" in objectives:
            metrics.update(itm_scores(model, held_out, hard=True))
            metrics.update(itm_scores(model, held_out, hard=False))
        if "mlm" in objectives:
            if name == "text_only":  # trained and evaluated without images
                scores = mlm_scores(model, held_out, zero_images=True)
                metrics.update({k.replace("_images_zeroed", ""): v for k, v in scores.items()})
            else:
                metrics.update(mlm_scores(model, held_out))
                metrics.update(mlm_scores(model, held_out, zero_images=True))
        if "mrm" in objectives:
            metrics["mrm_loss"] = evaluate(model, evaluation_sets(held_out, ["mrm"]))["val/mrm_loss"]
        line = {"run": name, "fusion": args.fusion, "epochs_run": result["epochs_run"],
                "train_captions": len(read_pairs([args.pairs])) - len(held_out.pairs),
                "held_out_captions": len(held_out.pairs), "held_out_images": len(held_out.pairs.images),
                **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
                "cache_seconds": round(result["cache_seconds"], 1), "train_seconds": round(result["train_seconds"], 1)}
        print(json.dumps(line), flush=True)
        summary[name] = metrics
    print(json.dumps({"summary": True, "itm_chance_pairwise": 0.5,
                      **{f"{run}/{k}": round(v, 4) for run, m in summary.items() for k, v in m.items()
                         if k.startswith(("itm_pairwise", "mlm_accuracy"))},
                      "total_seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
