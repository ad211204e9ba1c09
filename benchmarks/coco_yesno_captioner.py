"""Yes/no VQA attempt: the captioner's generative score, log p(text | photo), as evidence (PMI-style).

    python benchmarks/coco_yesno_captioner.py [--pool 24]

For every question, the shipped `captioner` scores two texts as the start of a caption: the statement
('a photo of a city bus') and the key phrase with an article ('a city bus'); summed log-probability of their
word pieces given (a) the question's photo, (b) the mean grid of all yes/no photos, (c) each of --pool fixed other
yes/no photos. Features: own - mean-grid, and the z-score of own against the pool (the phrase's own bias cancels:
pointwise mutual information between the text and the photo). Prints, one JSON line each:
  - PAIR RANKING: over (yes photo, no photo) pairs sharing a key phrase, how often the score puts yes higher
    (benchmarks/coco_yesno.py prints 0.564 for the key-phrase cosine in `default`);
  - 5-fold image-disjoint accuracy (the folds of coco_yesno.py) of each feature alone, and beside the chosen
    method's features (4 z-scores + question embedding, LR C=0.3).
The captioner never saw these photos (it was trained on Flickr8k dev + COCO mini, no shared photos). Scores are
cached in $POLYMODAL_CACHE (about 12 min to compute on 2 cores with --pool 24).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402

from coco_yesno import CHOSEN_C, DEFAULT_QA, cached, key_phrases, load_qa, needs_sklearn, pair_ranking  # noqa: E402
from run_context import announce  # noqa: E402


def texts_for(rows: list[dict]) -> dict[str, list[str]]:
    from polymodal.models.yesno import question_to_statement

    phrases = [k if k.startswith(("a ", "an ", "the ")) else "a " + k for k in key_phrases(rows)]
    return {"statement": [question_to_statement(r["question"])[0] for r in rows], "phrase": phrases}


def log_probs(model, grids, texts: list[str]):
    """Summed log p of each text's word pieces after [CLS] (its [SEP] left out: the text may go on) given its grid."""
    import torch

    with torch.inference_mode():
        ids, mask = model.tokenize(texts)
        lp = model.logits(model.hidden(model.prefix(grids.float()), ids[:, :-1], mask[:, :-1])).float().log_softmax(-1)
        got = lp.gather(-1, ids[:, 1:, None])[..., 0]
        return (got * (mask[:, 1:] & (ids[:, 1:] != 102))).sum(1).numpy()


def compute_scores(rows: list[dict], images: list[str], gi: np.ndarray, pool_size: int) -> dict:
    import torch

    import polymodal

    torch.set_num_threads(2)
    model = polymodal.load("captioner").eval()
    grids = torch.cat([model.encode_images(images[i : i + 64]) for i in range(0, len(images), 64)])
    pool = np.random.default_rng(0).choice(len(images), pool_size, replace=False)
    out = {"images": np.array(images)}
    for name, texts in texts_for(rows).items():
        own = np.concatenate([log_probs(model, grids[gi[i : i + 128]], texts[i : i + 128]) for i in range(0, len(rows), 128)])
        mean = grids.mean(0, keepdim=True)
        unique = sorted(set(texts))
        at = np.array([unique.index(t) for t in texts])
        per_text = [log_probs(model, mean.expand(len(unique[i : i + 256]), -1, -1), unique[i : i + 256])
                    for i in range(0, len(unique), 256)]
        others = np.zeros((len(unique), len(pool)))
        for j, p in enumerate(pool):
            others[:, j] = np.concatenate([log_probs(model, grids[p : p + 1].expand(len(unique[i : i + 256]), -1, -1),
                                                     unique[i : i + 256]) for i in range(0, len(unique), 256)])
            print(f"{name}: pool photo {j + 1}/{len(pool)}", file=sys.stderr, flush=True)
        out[f"{name}_own"], out[f"{name}_mean"], out[f"{name}_pool"] = own, np.concatenate(per_text)[at], others[at]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=24, help="other photos each text is also scored on")
    args = ap.parse_args()
    announce(__file__)
    needs_sklearn()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    from polymodal.cache import cache_dir
    from polymodal.models.yesno import fit_state, row_features

    if not DEFAULT_QA.is_file():
        print(f"no QA file at {DEFAULT_QA}", file=sys.stderr)
        return 2
    rows, data, digest = load_qa(DEFAULT_QA)
    images = list(data["images"])
    gi = np.array([images.index(r["path"]) for r in rows])
    y = np.array([r["answer"] == "yes" for r in rows], dtype=np.int64)
    scores = cached(cache_dir() / f"coco-yesno-captioner-{digest}-{args.pool}.npz", images,
                    lambda: compute_scores(rows, images, gi, args.pool))
    feats = {}
    for name in ("statement", "phrase"):
        own, pool = scores[f"{name}_own"], scores[f"{name}_pool"]
        feats[f"{name}: own - mean grid"] = own - scores[f"{name}_mean"]
        feats[f"{name}: z vs pool"] = (own - pool.mean(1)) / (pool.std(1) + 1e-6)
    for name, v in feats.items():
        pairs, frac = pair_ranking(rows, v, gi)
        print(json.dumps({"name": f"PAIR RANKING (yes photo above no photo, same phrase): captioner {name}",
                          "fraction": frac, "pairs": pairs}), flush=True)

    img = {"default": data["image_default"], "conse": data["image_conse"]}
    q_emb = {"question": data["q_raw"], "default": data["k_def"], "conse": data["k_raw"]}
    answers = [r["answer"] for r in rows]
    folds = list(GroupKFold(5, shuffle=True, random_state=0).split(np.zeros(len(rows)), y, gi))
    chosen = [row_features(fit_state(img, {k: v[tr] for k, v in q_emb.items()}, gi[tr], [answers[i] for i in tr],
                                     CHOSEN_C), img, q_emb, gi, np.arange(len(rows))) for tr, _ in folds]

    def report(name: str, columns) -> None:
        accs = []
        for f, (tr, te) in enumerate(folds):
            x = columns(f, tr)
            p = LogisticRegression(C=CHOSEN_C, max_iter=5000).fit(x[tr], y[tr]).predict_proba(x[te])[:, 1]
            accs.append(float(((p > 0.5) == y[te]).mean()))
        print(json.dumps({"name": name, "accuracy": round(float(np.mean(accs)), 4), "std": round(float(np.std(accs)), 4),
                          "n": len(rows)}), flush=True)

    def std(v, tr):
        return ((v - v[tr].mean()) / (v[tr].std() + 1e-9))[:, None]

    report("chosen (4 z-scores + question embedding)", lambda f, tr: chosen[f])
    for name, v in feats.items():
        report(f"captioner {name} alone", lambda f, tr, v=v: std(v, tr))
        report(f"chosen + captioner {name}", lambda f, tr, v=v: np.hstack([chosen[f], std(v, tr)]))
    report("chosen + all four captioner scores",
           lambda f, tr: np.hstack([chosen[f], *[std(v, tr) for v in feats.values()]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
