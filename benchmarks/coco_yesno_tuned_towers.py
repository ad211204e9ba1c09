"""Yes/no VQA attempt: a `default`-style space with the last image blocks (and text layers) fine-tuned on captions.

    python benchmarks/coco_yesno_tuned_towers.py [--configs 0:0,2:0,4:0,2:2]   # image_blocks:text_layers

Each config trains recipes/default.json on the caption pairs (Flickr8k dev + COCO-mini, all images; the yes/no
photos are never seen) with `--image-trainable-blocks B --text-trainable-layers L --tower-lr-scale 0.1`, then
embeds the yes/no photos and key phrases in the new space and prints, per config:
  - PAIR RANKING: over the (yes photo, no photo) pairs sharing a key phrase, how often the key-phrase cosine puts
    the yes photo higher (fold-free; benchmarks/coco_yesno.py prints 0.567 for the shipped `default`);
  - the chosen method of coco_yesno.py (4 z-scores + question embedding, LR C=0.3) with this space in place of
    `default`, on the same 5 image-disjoint folds.
Config 0:0 retrains the shipped recipe (its figures differ from `default`'s by the training run's noise).
Runs go to $POLYMODAL_CACHE/coco-yesno-tuned/B-L (reused when present); ~3-5 min per config on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402

from coco_yesno import CAPTIONS, CHOSEN_C, DEFAULT_QA, key_phrases, load_qa, needs_sklearn, pair_ranking  # noqa: E402
from run_context import announce  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "default.json"


def parse_configs(text: str) -> list[tuple[int, int]]:
    """'0:0,2:0' -> [(0, 0), (2, 0)]: image blocks and text layers to fine-tune."""
    try:
        configs = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part.strip()]
    except ValueError:
        configs = []
    if not configs or any(len(c) != 2 or min(c) < 0 for c in configs):
        raise SystemExit(f"--configs takes image_blocks:text_layers pairs like 0:0,2:0,2:2; got {text!r}")
    return configs


def train_space(blocks: int, layers: int, run: Path, captions: list[Path]) -> Path:
    """The default recipe with the last `blocks` image blocks and `layers` text layers trainable -> model folder."""
    from polymodal import cli

    model = run / "model"
    if (model / "config.json").is_file():
        return model
    argv = ["train", "contrastive", "--config", str(RECIPE), "--pairs", *map(str, captions), "--val-fraction", "0",
            "--image-trainable-blocks", str(blocks), "--text-trainable-layers", str(layers), "--tower-lr-scale", "0.1",
            "--quiet", "--overwrite", "--out", str(run)]
    with contextlib.redirect_stdout(sys.stderr):  # the training's own result line is not one of ours
        status = cli.main(argv)
    if status != 0:
        raise SystemExit(f"training {run.name} failed")
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qa", type=Path, default=DEFAULT_QA)
    ap.add_argument("--configs", default="0:0,2:0,4:0,2:2")
    args = ap.parse_args()
    announce(__file__)
    needs_sklearn()
    configs = parse_configs(args.configs)
    captions = [f for f in CAPTIONS if f.is_file()]
    if not args.qa.is_file() or not captions:
        print(f"needs {args.qa} and the caption pairs {[str(c) for c in CAPTIONS]}", file=sys.stderr)
        return 2
    import polymodal
    from sklearn.model_selection import GroupKFold

    from polymodal.cache import cache_dir
    from polymodal.models.yesno import fit_state, row_features

    rows, data, _ = load_qa(args.qa)
    index = {p: i for i, p in enumerate(data["images"])}
    gi = np.array([index[r["path"]] for r in rows])
    y = np.array([r["answer"] == "yes" for r in rows])
    answers = [r["answer"] for r in rows]
    folds = list(GroupKFold(5, shuffle=True, random_state=0).split(np.zeros(len(rows)), y, gi))
    keys = key_phrases(rows)
    for blocks, layers in configs:
        model = polymodal.load(train_space(blocks, layers, cache_dir() / "coco-yesno-tuned" / f"{blocks}-{layers}", captions))
        img = {"default": np.asarray(model.encode_image(list(data["images"]), batch_size=32)), "conse": data["image_conse"]}
        q_emb = {"question": data["q_raw"], "default": np.asarray(model.encode_text(keys)), "conse": data["k_raw"]}
        pairs, ranking = pair_ranking(rows, np.einsum("nd,nd->n", img["default"][gi], q_emb["default"]), gi)
        accs = []
        for tr, te in folds:
            state = fit_state(img, {k: v[tr] for k, v in q_emb.items()}, gi[tr], [answers[i] for i in tr], CHOSEN_C)
            x = row_features(state, img, q_emb, gi[te], np.asarray(te))
            accs.append(float((((x @ state["coef"] + state["intercept"][0]) > 0) == y[te]).mean()))
        print(json.dumps({"image_blocks": blocks, "text_layers": layers, "pair_ranking": ranking, "pairs": pairs,
                          "chosen_method_accuracy": round(float(np.mean(accs)), 4), "std": round(float(np.std(accs)), 4),
                          "n": len(rows)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
