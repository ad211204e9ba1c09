"""Yes/no VQA on real COCO photos: every attempt with 5-fold image-disjoint cross-validation, one JSON line each.

    python benchmarks/coco_yesno.py [--qa /work/shared/data/vqa-coco-yesno-train/qa.jsonl] [--groups image|pair|both]
    python benchmarks/coco_yesno.py --save-builtin      # also train the chosen method on ALL rows and write
                                                        # polymodal/resources/models/coco-yesno/

Folds: GroupKFold(5, shuffle, seed 0) by image ("image"), or by connected components of images that share a
question key phrase ("pair": VQA v2 asks the same question of two similar photos with opposite answers, and
this keeps such pairs in one fold). Tower outputs are computed once and cached (--cache, default
$POLYMODAL_CACHE/coco-yesno-bench-*.npz); after that a full run is seconds of numpy/sklearn. Single-threaded.
After the attempts: the chosen method's accuracy by row kind ("CHOSEN on rows: ...") and, with no folds, how often
each alignment score ranks the yes photo above the no photo of the same key phrase ("PAIR RANKING ...").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from yesno_joint_heads import train_and_score  # noqa: E402
from run_context import SHARED_DATA, announce  # noqa: E402

DEFAULT_QA = SHARED_DATA / "vqa-coco-yesno-train" / "qa.jsonl"
if not DEFAULT_QA.is_file():
    DEFAULT_QA = Path("/work/shared/data/vqa-coco-yesno-train/qa.jsonl")
CAPTIONS = [DEFAULT_QA.parents[1] / "flickr8k-dev" / "pairs.jsonl", DEFAULT_QA.parents[1] / "coco-mini-train" / "pairs.jsonl"]
OUT = Path(__file__).resolve().parents[1] / "polymodal" / "resources" / "models" / "coco-yesno"
CHOSEN_C = 0.3
CHOSEN = "CHOSEN: 4 z-scores + question embedding (LR C=0.3, shipped code)"
CAPTION_KS = (10, 25, 50, 100)  # caption-kNN neighbour counts; each fold picks one by inner CV on its training rows


def needs_sklearn() -> None:
    """The attempts fit scikit-learn's models: without it, one line naming the extra, not a traceback."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark needs scikit-learn: pip install 'polymodal[demo]'") from None


def read_rows(qa: Path) -> list[dict]:
    rows = [json.loads(line) for line in qa.read_text().splitlines() if line.strip()]
    for r in rows:
        r["path"] = str((qa.parent / r["image"]).resolve())
    return rows


def cached(cache: Path | None, images: list[str], compute) -> dict:
    """compute() -> arrays (with "images"), loaded from `cache` instead when it holds the same images."""
    if cache and cache.is_file():
        data = dict(np.load(cache, allow_pickle=False))
        if list(data["images"]) == images:
            return data
    data = compute()
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **data)
    return data


def image_features(base, paths: list[str], what: str) -> dict:
    """Tower outputs per image: pooled [N, 1280], default and ConSE embeddings, ImageNet class probabilities."""
    import torch

    from polymodal.models.conse import conse_embedding
    from polymodal.models.yesno import _normalize

    out = {"pooled": [], "default": [], "conse": [], "probs": []}
    with torch.inference_mode():
        for i in range(0, len(paths), 32):
            pooled = base.image_tower.pooled(torch.from_numpy(base.transform(paths[i : i + 32]))).float()
            logits = base.image_tower.net._fc(pooled)
            out["pooled"].append(pooled.numpy())
            out["default"].append(_normalize(base.image_from_cache(pooled).numpy()))
            out["conse"].append(_normalize(conse_embedding(logits, base.class_matrix).numpy()))
            out["probs"].append(logits.softmax(-1).numpy())
            print(f"encoded {i + len(pooled)}/{len(paths)} {what}", file=sys.stderr, flush=True)
    return {k: np.concatenate(v) for k, v in out.items()}


def encode(rows: list[dict], cache: Path | None) -> dict:
    """Everything the attempts need, computed once: image embeddings (default, ConSE), pooled tower features,
    ImageNet class probabilities, question / key-phrase / statement embeddings."""

    def compute() -> dict:
        import torch

        from polymodal.models.yesno import YesNoModel, _empty_state, _normalize, question_to_statement

        torch.set_num_threads(1)
        model = YesNoModel(_empty_state())
        base = model.base
        f = image_features(base, images, "images")
        questions = [r["question"] for r in rows]
        with torch.inference_mode():
            q = model.encode_questions(questions)
            s_raw = base.text_tower([question_to_statement(t)[0] for t in questions])
            s_def = _normalize(base.text_head(s_raw).numpy())
        return {"images": np.array(images), "image_default": f["default"], "image_conse": f["conse"],
                "image_probs": f["probs"], "image_pooled": f["pooled"],
                "q_raw": q["question"], "k_def": q["default"], "k_raw": q["conse"],
                "s_def": s_def, "s_raw": _normalize(s_raw.numpy()), "class_matrix": base.class_matrix.numpy()}

    images = sorted({r["path"] for r in rows})
    return cached(cache, images, compute)


def encode_captions(files: list[Path], cache: Path | None) -> dict:
    """Caption pairs for the joint-heads and caption-kNN attempts: pooled tower features and ConSE per image, MiniLM per caption."""
    from polymodal.data.pairs import read_pair_source

    sets = [read_pair_source(f) for f in files]
    images = [str(Path(p).resolve()) for ps in sets for p in ps.images]
    owner = np.concatenate([ps.caption_image + sum(len(x.images) for x in sets[:k]) for k, ps in enumerate(sets)])
    texts = [c for ps in sets for c in ps.captions]

    def compute() -> dict:
        import torch

        from polymodal.models.yesno import YesNoModel, _empty_state, _normalize

        torch.set_num_threads(1)
        base = YesNoModel(_empty_state()).base
        f = image_features(base, images, "caption images")
        with torch.inference_mode():
            text = np.concatenate([_normalize(base.text_tower(texts[i : i + 256]).numpy()) for i in range(0, len(texts), 256)])
        return {"images": np.array(images), "pooled": f["pooled"], "conse": f["conse"], "text": text, "image": owner}

    return cached(cache, images, compute)


def load_qa(qa: Path, cache: Path | None = None) -> tuple[list[dict], dict, str]:
    """The QA rows, their encodings (cached by the file's digest unless `cache` names a file) and that digest."""
    from polymodal.cache import cache_dir
    from polymodal.resources import HERE

    rows = read_rows(qa)
    digest = hashlib.sha256(qa.read_bytes()).hexdigest()[:12]
    # the embeddings come from the shipped `default` heads: a re-shipped default must not reuse them
    base_version = json.loads((HERE / "models" / "default" / "config.json").read_text())["version"]
    return rows, encode(rows, cache or cache_dir() / f"coco-yesno-bench-v2-{digest}-{base_version}.npz"), digest


def pool_z(image: np.ndarray, text: np.ndarray, gi: np.ndarray, tr: np.ndarray, kind: str) -> np.ndarray:
    """z-score of each row's image-text cosine (image[gi] . text) against the fold's training images ("image")
    or its distinct training phrases ("text"), computed exactly."""
    s = np.einsum("nd,nd->n", image[gi], text)
    pool = image[np.unique(gi[tr])] if kind == "image" else np.unique(text[tr].round(5), axis=0)
    other = text if kind == "image" else image[gi]
    p = other @ pool.T
    return (s - p.mean(1)) / (p.std(1) + 1e-6)


def key_phrases(rows: list[dict]) -> list[str]:
    """Each question's key phrase with a leading article dropped ('Is this a zoo?' and 'Could this be zoo?' match)."""
    import re

    from polymodal.models.yesno import question_to_statement

    return [re.sub(r"^(a|an|the) ", "", question_to_statement(r["question"])[1]) for r in rows]


def pair_groups(rows: list[dict], image_index: np.ndarray) -> np.ndarray:
    """Connected components of images linked by a shared question key phrase (article dropped)."""
    parent = list(range(int(image_index.max()) + 1))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first: dict[str, int] = {}
    for key, i in zip(key_phrases(rows), image_index):
        if key in first:
            parent[find(int(i))] = find(first[key])
        else:
            first[key] = int(i)
    return np.array([find(int(i)) for i in image_index])


def breakdown(rows: list[dict], correct: np.ndarray, folds: list) -> dict[str, tuple[int, float]]:
    """Out-of-fold accuracy by row kind: key phrase asked with both answers in the set (VQA v2's complementary
    pairs about look-alike photos) or not; key phrase new to the training fold, or seen there with this row's
    answer only, or with the opposite answer only (a learned phrase prior then points the wrong way); template."""
    keys = key_phrases(rows)
    y = np.array([r["answer"] for r in rows])
    answers: dict[str, set] = {}
    for k, a in zip(keys, y):
        answers.setdefault(k, set()).add(a)
    kinds = {"phrase asked with both answers": np.array([len(answers[k]) == 2 for k in keys])}
    kinds["phrase asked with one answer"] = ~kinds["phrase asked with both answers"]
    seen = np.full(len(rows), "new to the training fold", dtype=object)
    for tr, te in folds:
        in_train: dict[str, set] = {}
        for i in tr:
            in_train.setdefault(keys[i], set()).add(y[i])
        for i in te:
            got = in_train.get(keys[i])
            if got is not None:
                seen[i] = "seen in training, both answers" if len(got) == 2 else (
                    "seen in training, same answer" if y[i] in got else "seen in training, opposite answer")
    for kind in ("new to the training fold", "seen in training, same answer", "seen in training, opposite answer",
                 "seen in training, both answers"):
        kinds[f"phrase {kind}"] = seen == kind
    first = np.array([" ".join(r["question"].lower().split()[:2]) for r in rows])
    for template in ("is this", "could this", "are there"):
        kinds[f"'{template} ...'"] = first == template
    return {k: (int(m.sum()), round(float(correct[m].mean()), 4)) for k, m in kinds.items() if m.any()}


def phrase_classes(phrases: np.ndarray, class_matrix: np.ndarray) -> np.ndarray:
    """Each key phrase's weights over the ImageNet class names: softmax of 20 x cosine (its nearest few classes)."""
    rel = phrases @ class_matrix.T
    rel = np.exp(20 * (rel - rel.max(1, keepdims=True)))
    return rel / rel.sum(1, keepdims=True)


def caption_knn_scores(qa_pooled: np.ndarray, caps: dict, phrases: np.ndarray, k: int) -> np.ndarray:
    """'Describe by neighbours' [rows, QA images]: a phrase's best caption cosine (MiniLM-MiniLM) on each of the
    image's k nearest caption photos, averaged. The neighbours come from image-image cosine of sqrt pooled tower
    features, centred on the caption photos; text-text and image-image stand in for the weak cross-modal link."""
    from polymodal.models.yesno import _normalize

    cap, qa = np.sqrt(np.maximum(caps["pooled"], 0)), np.sqrt(np.maximum(qa_pooled, 0))
    sim = _normalize(qa - cap.mean(0)) @ _normalize(cap - cap.mean(0)).T
    order = np.argsort(caps["image"], kind="stable")  # five captions per photo, grouped by photo
    best = (phrases @ caps["text"][order].T).reshape(len(phrases), len(cap), -1).max(2)  # [rows, caption photos]
    near = np.argsort(-sim, 1)[:, :k]
    return best[:, near].mean(2)


def image_pool_z(scores: np.ndarray, gi: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """Each row's score on its own image, z-scored against the same phrase's scores on the fold's training images."""
    pool = scores[:, np.unique(gi[tr])]
    return (scores[np.arange(len(gi)), gi] - pool.mean(1)) / (pool.std(1) + 1e-6)


def neighbour_vote(pooled: np.ndarray, phrases: np.ndarray, gi: np.ndarray, y: np.ndarray, tr: np.ndarray,
                   te: np.ndarray, threshold: float = 0.8) -> np.ndarray:
    """Question-conditioned kNN: the training rows whose key phrase is close (MiniLM cosine >= threshold) vote
    with their answer (+1 yes, -1 no), weighted by that cosine times how much more their photo resembles the test
    photo than the voters' photos do on average (centring: a phrase's prior is the question embedding's job)."""
    from polymodal.models.yesno import _normalize

    feats = np.sqrt(np.maximum(pooled, 0))
    feats = _normalize(feats - feats[np.unique(gi[tr])].mean(0))
    look = feats[gi[te]] @ feats[gi[tr]].T
    w = phrases[te] @ phrases[tr].T
    w = w * (w >= threshold)
    centre = (w * look).sum(1, keepdims=True) / np.maximum(w.sum(1, keepdims=True), 1e-9)
    return (w * (2 * y[tr] - 1) * (look - centre)).sum(1) / np.maximum(w.sum(1), 1e-9)


def out_of_fold_vote(pooled, phrases, gi, y, tr, te) -> np.ndarray:
    """neighbour_vote for every row: test rows hear all training rows; a training row hears only the training
    rows of other photos (inner image-disjoint folds), so the LR sees the vote as it will be at test time."""
    tr = np.asarray(tr)
    out = np.zeros(len(gi))
    out[te] = neighbour_vote(pooled, phrases, gi, y, tr, te)
    for inner_tr, inner_te in _inner_folds(gi, tr, seed=1):
        out[tr[inner_te]] = neighbour_vote(pooled, phrases, gi, y, tr[inner_tr], tr[inner_te])
    return out


def _inner_folds(gi: np.ndarray, tr: np.ndarray, splits: int = 5, seed: int = 0) -> list:
    from sklearn.model_selection import GroupKFold

    return list(GroupKFold(splits, shuffle=True, random_state=seed).split(tr, groups=gi[tr]))


def pair_ranking(rows: list[dict], score: np.ndarray, image_index: np.ndarray) -> tuple[int, float | None]:
    """Over every (yes row, no row) pair with the same key phrase and different photos: how often the yes row's
    score is the higher. The phrase's own bias cancels, so this is the image-text alignment alone. Chance 0.5. On a
    phrase asked once each way, one threshold per phrase that is not told the answers scores about this fraction
    at best: between the two scores it gets both rows right or both wrong, anywhere else exactly one. No pairs (a
    small --qa file): None, printed as null (NaN is not JSON)."""
    by: dict[str, list[int]] = {}
    for i, k in enumerate(key_phrases(rows)):
        by.setdefault(k, []).append(i)
    wins = [score[a] > score[b] for ix in by.values() for a in ix for b in ix
            if rows[a]["answer"] == "yes" and rows[b]["answer"] == "no" and image_index[a] != image_index[b]]
    return len(wins), round(float(np.mean(wins)), 4) if wins else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qa", type=Path, default=DEFAULT_QA)
    ap.add_argument("--groups", choices=("image", "pair", "both"), default="both")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--captions", type=Path, nargs="*", default=CAPTIONS,
                    help="caption pair files for the joint-heads and caption-kNN attempts (none: skip them)")
    ap.add_argument("--save-builtin", action="store_true")
    args = ap.parse_args()
    announce(__file__)
    needs_sklearn()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    from polymodal.cache import cache_dir
    from polymodal.models.yesno import SPACES, fit_state, row_features

    if not args.qa.is_file():
        print(f"no QA file at {args.qa}; pass --qa", file=sys.stderr)
        return 2
    rows, data, _ = load_qa(args.qa, args.cache)
    captions = [f for f in args.captions if f.is_file()]
    caps = None
    if captions:
        key = hashlib.sha256(b"".join(f.read_bytes() for f in captions)).hexdigest()[:12]
        caps = encode_captions(captions, cache_dir() / f"coco-yesno-captions-{key}.npz")
    index = {p: i for i, p in enumerate(data["images"])}
    gi = np.array([index[r["path"]] for r in rows])
    y = np.array([r["answer"] == "yes" for r in rows], dtype=np.int64)
    answers = [r["answer"] for r in rows]
    n = len(rows)
    img = {"default": data["image_default"], "conse": data["image_conse"]}
    q_emb = {"question": data["q_raw"], "default": data["k_def"], "conse": data["k_raw"]}

    def lr(x, tr, te, C=1.0):
        return LogisticRegression(C=C, max_iter=5000).fit(x[tr], y[tr]).predict_proba(x[te])[:, 1]

    def zpool(image, text, tr, kind):
        return pool_z(image, text, gi, tr, kind)

    def class_evidence(tr):
        """ImageNet object evidence: the key phrase's nearest class names (softmax(20 cos)) weighted by the image's
        class probabilities, log, z-scored against the fold's training images."""
        rel = phrase_classes(data["k_raw"], data["class_matrix"])
        ev = np.log((rel * data["image_probs"][gi]).sum(1) + 1e-6)
        pool = np.log(rel @ data["image_probs"][np.unique(gi[tr])].T + 1e-6)
        return (ev - pool.mean(1)) / (pool.std(1) + 1e-6)

    def shipped(tr, te):
        state = fit_state(img, {k: v[tr] for k, v in q_emb.items()}, gi[tr], [answers[i] for i in tr], CHOSEN_C)
        x = row_features(state, img, q_emb, gi[te], np.asarray(te))
        return 1 / (1 + np.exp(-(x @ state["coef"] + state["intercept"][0])))

    def chosen_features(tr):
        """CHOSEN's feature rows (4 z-scores + question embedding) for every row, pools from rows `tr`."""
        state = fit_state(img, {k: v[tr] for k, v in q_emb.items()}, gi[tr], [answers[i] for i in tr], CHOSEN_C)
        return row_features(state, img, q_emb, gi, np.arange(n))

    knn = {} if caps is None else {k: caption_knn_scores(data["image_pooled"], caps, data["k_raw"], k) for k in CAPTION_KS}

    def caption_knn(tr, te, with_chosen):
        """The caption-kNN z-score, alone or as one more column beside CHOSEN's; k by 3-fold inner CV on `tr`."""
        def fit_predict(k, fit, pred):
            x = image_pool_z(knn[k], gi, fit)[:, None]
            return lr(np.hstack([chosen_features(fit), x]), fit, pred, CHOSEN_C) if with_chosen else lr(x, fit, pred)

        tr = np.asarray(tr)
        inner = [(tr[a], tr[b]) for a, b in _inner_folds(gi, tr, 3)]
        best = max(CAPTION_KS, key=lambda k: np.mean([((fit_predict(k, a, b) > 0.5) == y[b]).mean() for a, b in inner]))
        return fit_predict(best, tr, te)

    def vote(tr, te, with_chosen):
        """The question-conditioned neighbour vote (standardized on the training rows), alone or beside CHOSEN's."""
        v = out_of_fold_vote(data["image_pooled"], data["k_raw"], gi, y, tr, te)[:, None]
        v = v / (v[tr].std() + 1e-9)
        return lr(np.hstack([chosen_features(tr), v]), tr, te, CHOSEN_C) if with_chosen else lr(v, tr, te)

    z4 = lambda tr: np.stack([zpool(img[s], q_emb[s], tr, k) for s in SPACES for k in ("image", "text")], 1)  # noqa: E731
    attempts = {
        "majority (training-fold majority answer)": lambda tr, te: np.full(len(te), float(y[tr].mean() > 0.5)),
        "question-only: LR on MiniLM question embedding": lambda tr, te: lr(data["q_raw"], tr, te),
        "image-only: LR on default image embedding": lambda tr, te: lr(img["default"][gi], tr, te),
        "learned fusion: LR on image*statement elementwise (default space)":
            lambda tr, te: lr(10 * img["default"][gi] * data["s_def"], tr, te, 0.1),
        "statement cosine (default model) + threshold": lambda tr, te: lr(
            np.einsum("nd,nd->n", img["default"][gi], data["s_def"])[:, None], tr, te),
        "statement z vs image pool (default)": lambda tr, te: lr(zpool(img["default"], data["s_def"], tr, "image")[:, None], tr, te),
        "key-phrase z vs image pool (default)": lambda tr, te: lr(zpool(img["default"], q_emb["default"], tr, "image")[:, None], tr, te),
        "key-phrase z vs phrase pool (default)": lambda tr, te: lr(zpool(img["default"], q_emb["default"], tr, "text")[:, None], tr, te),
        "key-phrase z vs image pool (lite ConSE)": lambda tr, te: lr(zpool(img["conse"], q_emb["conse"], tr, "image")[:, None], tr, te),
        "key-phrase z vs phrase pool (lite ConSE)": lambda tr, te: lr(zpool(img["conse"], q_emb["conse"], tr, "text")[:, None], tr, te),
        "ImageNet object evidence for the key phrase (z)": lambda tr, te: lr(class_evidence(tr)[:, None], tr, te),
        "4 alignment z-scores (LR)": lambda tr, te: lr(z4(tr), tr, te),
        "4 z-scores + object evidence (LR)": lambda tr, te: lr(np.hstack([z4(tr), class_evidence(tr)[:, None]]), tr, te),
        **({} if caps is None else {"joint heads: caption InfoNCE + yes/no BCE on the key phrase (yesno_joint_heads.py)":
                                     lambda tr, te: train_and_score(data, caps, gi, y, tr, te)}),
        **({} if caps is None else {
            "caption kNN: key phrase vs captions of the k nearest caption photos, z vs image pool (LR)":
                lambda tr, te: caption_knn(tr, te, False),
            "CHOSEN features + caption-kNN z (LR C=0.3)": lambda tr, te: caption_knn(tr, te, True)}),
        "question-conditioned kNN: similar-phrase training rows vote, weighted by centred photo similarity (LR)":
            lambda tr, te: vote(tr, te, False),
        "CHOSEN features + neighbour vote (LR C=0.3)": lambda tr, te: vote(tr, te, True),
        CHOSEN: shipped,
    }
    groupings = ["image", "pair"] if args.groups == "both" else [args.groups]
    for grouping in groupings:
        groups = gi if grouping == "image" else pair_groups(rows, gi)
        folds = list(GroupKFold(5, shuffle=True, random_state=0).split(np.zeros(n), y, groups))
        for name, fn in attempts.items():
            correct = np.zeros(n, dtype=bool)
            for tr, te in folds:
                correct[te] = (fn(tr, te) > 0.5) == y[te]
            accs = [float(correct[te].mean()) for _, te in folds]
            print(json.dumps({"name": name, "folds": grouping, "accuracy": round(float(np.mean(accs)), 4),
                              "std": round(float(np.std(accs)), 4), "n": n}), flush=True)
            if name == CHOSEN:
                chosen_correct = correct
        for kind, (count, acc) in breakdown(rows, chosen_correct, folds).items():
            print(json.dumps({"name": f"CHOSEN on rows: {kind}", "folds": grouping, "accuracy": acc, "n": count}))
    # fold-free scores: within one phrase a pool z-score is a monotone function of the cosine, so cosines suffice
    rel = phrase_classes(data["k_raw"], data["class_matrix"])
    ranked = {"key-phrase cosine (default)": np.einsum("nd,nd->n", img["default"][gi], q_emb["default"]),
              "key-phrase cosine (lite ConSE)": np.einsum("nd,nd->n", img["conse"][gi], q_emb["conse"]),
              "ImageNet object evidence": np.log((rel * data["image_probs"][gi]).sum(1) + 1e-6)}
    ranked["sum of the three, each standardized"] = sum((v - v.mean()) / v.std() for v in list(ranked.values()))
    for k, scores in knn.items():
        ranked[f"caption kNN, k={k}"] = cap = scores[np.arange(n), gi]
        ranked[f"sum of the three + caption kNN k={k}"] = ranked["sum of the three, each standardized"] + (cap - cap.mean()) / cap.std()
    for name, score in ranked.items():
        pairs, frac = pair_ranking(rows, score, gi)
        print(json.dumps({"name": f"PAIR RANKING (yes photo above no photo, same phrase): {name}",
                          "fraction": frac, "pairs": pairs}))
    if args.save_builtin:
        from polymodal.models.yesno import YesNoModel
        from polymodal.training_photos import photo_hashes, read_training_photos, write_training_photos

        state = fit_state(img, q_emb, gi, answers, CHOSEN_C)
        model = YesNoModel(state, {"name": "coco-yesno", "base": "default", "C": CHOSEN_C, "n_train": n,
                                   "trained_on": "vqa-coco-yesno-train (benchmarks/coco_yesno.py --save-builtin)"})
        model.save(OUT)
        # its own photos, and those of `default` whose spaces it scores in: `eval vqa` warns when it meets them
        write_training_photos(OUT, photo_hashes(sorted({r["path"] for r in rows})) | (read_training_photos("default") or set()))
        size = sum(f.stat().st_size for f in OUT.iterdir())
        print(json.dumps({"saved": str(OUT), "bytes": size, "version": model.version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
