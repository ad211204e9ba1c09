"""K-fold estimate of held-out retrieval for a contrastive training recipe, over a full-size candidate pool.

Each fold trains on the other folds' images (+ any --extra-pairs) and embeds its own held-out images and captions;
the held-out embeddings of all folds are then pooled, so R@K is measured against every image of the source (e.g.
1,000 Flickr8k photos), as a test split of that size would be. Tower features are computed once and cached.

    python benchmarks/contrastive_cv.py --pairs ../shared/data/flickr8k-dev/pairs.jsonl \
        --extra-pairs ../shared/data/coco-mini-train/pairs.jsonl --config recipe.json
Prints one JSON line per fold and a final one with the pooled metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from polymodal.data.augment import Augment, make_rng
from polymodal.data.pairs import PairSet, read_pair_source
from polymodal.errors import PolymodalError
from polymodal.eval.retrieval import retrieval_metrics
from polymodal.index.store import query_matrix
from polymodal.models.dual_encoder import DualEncoder
from polymodal.train.contrastive import ContrastiveRecipe, _hard_negatives
from polymodal.train.features import (
    CachedPairDataset, TextRows, collate_cached, image_features, text_features,
)
from polymodal.train.objectives import ContrastiveObjective
from polymodal.train.trainer import Trainer, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--extra-pairs", nargs="*", default=[], help="always in training (never held out)")
    ap.add_argument("--config", help="recipe JSON (same keys as `polymodal train contrastive --config`)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[], help="overrides like arch.embed_dim=256 train.epochs=10")
    ap.add_argument("--center-betas", nargs="*", type=float, default=[],
                    help="also score with beta x the fold's mean training embedding subtracted (hubness check): "
                         "from the images alone, and from images and texts both")
    args = ap.parse_args(argv)
    announce(__file__)

    work = tempfile.TemporaryDirectory(prefix="cv-")  # the folds' runs and checkpoints: removed when the run ends
    try:
        settings = json.loads(open(args.config).read()) if args.config else {}
        for item in args.set:
            key, value = item.split("=", 1)
            section, _, name = key.rpartition(".")
            (settings.setdefault(section, {}) if section else settings)[name] = json.loads(value)
        main_set = read_pair_source(args.pairs)
        extra = PairSet.from_pairs([p for s in args.extra_pairs for p in read_pair_source(s).pairs])
        settings.update(pairs=[args.pairs], out=work.name)
        recipe = ContrastiveRecipe.from_dict(settings)
    except (OSError, ValueError, PolymodalError) as exc:  # a missing file, a bad --set or recipe key
        work.cleanup()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with work:
        return _cross_validate(args, recipe, settings, main_set, extra)


def _cross_validate(args, recipe: ContrastiveRecipe, settings: dict, main_set: PairSet, extra: PairSet) -> int:
    recipe.train.patience = 0  # fixed epochs: held-out folds must not choose the model

    all_set = PairSet.from_pairs(main_set.pairs + extra.pairs)
    n_main = len(main_set.images)
    set_seed(recipe.train.seed)
    probe = DualEncoder(recipe.arch)
    feats = image_features(probe, all_set.images, views=recipe.views, augment=Augment(), seed=recipe.train.seed)
    texts = text_features(probe, all_set.captions) if probe.text_frozen else all_set.captions
    folds = np.array_split(make_rng(recipe.train.seed).permutation(n_main), args.folds)

    held_img, held_txt, held_owner, offset, t0 = [], [], [], 0, time.perf_counter()
    train_means = []  # per fold: (mean training image embedding, mean training caption embedding), for --center-betas
    for f, held in enumerate(folds):
        train_imgs = np.setdiff1d(np.arange(len(all_set.images)), held)
        sub = all_set.subset(train_imgs)
        remap = {img: i for i, img in enumerate(sub.images)}
        order = np.array([all_set.images.index(img) for img in sub.images])
        cap_idx = [c for c, o in enumerate(all_set.caption_image) if o in set(train_imgs.tolist())]
        set_seed(recipe.train.seed)
        model = DualEncoder(recipe.arch)
        dataset = CachedPairDataset(
            np.asarray(feats[:, order]), texts[cap_idx] if isinstance(texts, np.ndarray) else [texts[c] for c in cap_idx],
            np.array([remap[all_set.pairs[c].image] for c in cap_idx]), seed=recipe.train.seed,
            negatives=_hard_negatives(model, sub, recipe, TextRows(()), progress=False),  # sub's pairs: cap_idx
        )
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, seed=recipe.train.seed, drop_last=True)
        loader = DataLoader(dataset, batch_size=min(recipe.batch_size, len(dataset)), sampler=sampler,
                            drop_last=True, collate_fn=collate_cached)
        dataset.set_epoch = lambda e, d=dataset.set_epoch: (d(e), sampler.set_epoch(e))
        objective = ContrastiveObjective(gradcache_chunk=recipe.gradcache_chunk or None)
        Trainer(model, {"contrastive": (objective, 1.0, loader)}, recipe.train, recipe.out + f"/fold{f}",
                progress=False).fit()
        model.eval()
        with torch.no_grad():
            img = model.image_from_cache(torch.from_numpy(np.array(feats[0, held], np.float32)))
            caps = [c for c, o in enumerate(all_set.caption_image) if o in set(held.tolist())]
            txt = (model.text_from_pooled(torch.from_numpy(np.array(texts[caps], np.float32)))
                   if isinstance(texts, np.ndarray) else model._text_batch([texts[c] for c in caps]))
            if args.center_betas:
                train_img = model.image_from_cache(torch.from_numpy(np.array(feats[0, train_imgs], np.float32)))
                train_txt = (model.text_from_pooled(torch.from_numpy(np.array(texts[cap_idx], np.float32)))
                             if isinstance(texts, np.ndarray) else model._text_batch([texts[c] for c in cap_idx]))
                train_means.append([torch.nn.functional.normalize(e, dim=-1).mean(0).numpy()
                                    for e in (train_img, train_txt)])
        held_img.append(torch.nn.functional.normalize(img, dim=-1).numpy())
        held_txt.append(torch.nn.functional.normalize(txt, dim=-1).numpy())
        local = {g: i for i, g in enumerate(held.tolist())}
        held_owner.append(np.array([local[all_set.caption_image[c]] + offset for c in caps]))
        offset += len(held)
        print(json.dumps({"fold": f, "train_images": len(train_imgs), "held_out": len(held),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    metrics = retrieval_metrics(np.concatenate(held_img), np.concatenate(held_txt), np.concatenate(held_owner))
    print(json.dumps({"pool_images": offset, **metrics, "train_seconds": round(time.perf_counter() - t0, 1),
                      "recipe": {k: v for k, v in settings.items() if k != "out"}}))  # (out: removed)
    for beta in args.center_betas:
        for what in ("images", "both"):
            img = np.concatenate([query_matrix(e - beta * m[0]) for e, m in zip(held_img, train_means)])
            txt = np.concatenate([query_matrix(e - beta * m[1]) if what == "both" else e
                                  for e, m in zip(held_txt, train_means)])
            print(json.dumps({"centered": what, "beta": beta, **retrieval_metrics(img, txt, np.concatenate(held_owner))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
