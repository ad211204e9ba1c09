"""Image->image retrieval ("more like this", as `search --image` ranks an index) over labelled photos: each photo
queries all the others, and a hit is another photo of its label. The figures are those of the deep metric learning
literature (Musgrave et al. 2020, "A Metric Learning Reality Check"): R@K (P@1 at K = 1), R-Precision and MAP@R."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)

KS = (1, 5, 10)
CELLS = 1 << 22  # similarities sorted at a time (queries x photos; ~8 arrays that size): 10,000 photos, 419 queries


def image_retrieval_metrics(emb: np.ndarray, labels: list[str], ks=KS, details: dict | None = None) -> dict:
    """Rows of ``emb`` are L2-normalised photo embeddings, ``labels`` their classes. Each photo with another photo
    of its label is a query over all the others (itself left out). Per query, with R the other photos of its label:
    R@K = 1 when one of them is among the K nearest; R-Precision = the share of them among the R nearest; MAP@R = the
    mean over i <= R of the precision at i for each i whose neighbour is one of them, divided by R. A tie with a photo
    of another label ranks that photo first (as eval retrieval's ties count against the query), and a query whose
    similarities are not finite scores 0. ``details``, a dict, gets per-photo arrays: "scored" (has another photo of
    its label), "positives" (its R), "rank" (1-based rank of its first same-label photo), "nearest" (row of its
    nearest photo), "top" (rows of its 3 nearest, best first), "map_r"."""
    labels = list(labels)
    if len(labels) != len(emb):
        raise PolymodalError(f"image->image retrieval needs one label per photo: got {len(emb)} photos, "
                             f"{len(labels)} labels")
    names, codes = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    codes = codes.reshape(-1)
    if len(names) < 2:  # (the CLI says so before the model loads; photos left out as unreadable can bring it here)
        raise PolymodalError(f"every photo has the label {names[0]!r}: every other photo would be a hit; label "
                             "photos of at least two classes" if len(names) else "no photos to rank")
    n = len(codes)
    positives = np.bincount(codes)[codes] - 1  # R of each query
    scored = positives > 0
    if not scored.any():
        raise PolymodalError("no label has two photos: image->image retrieval looks for another photo of each "
                             "photo's label; give each class at least two photos")
    rank, nearest, map_r, r_prec = (np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n), np.zeros(n))
    top = np.zeros((n, min(3, n - 1)), np.int64)
    step = max(1, CELLS // n)
    for start in range(0, n, step):
        rows = np.arange(start, min(n, start + step))
        sim = np.asarray(emb[rows] @ np.asarray(emb).T, dtype=np.float64)
        finite = np.isfinite(sim).all(axis=1)
        sim[~np.isfinite(sim)] = -np.inf
        sim[np.arange(len(rows)), rows] = -np.inf  # the query itself: ranked last, and no hit
        relevant = codes[rows][:, None] == codes[None, :]
        relevant[np.arange(len(rows)), rows] = False
        # a query whose row is not finite ranks its label's photos last (rank n below): its top hits say so too
        sim[~finite[:, None] & relevant] = -np.inf
        tie = relevant.astype(np.int8)
        tie[np.arange(len(rows)), rows] = 2  # the query itself after every other photo, even those at -inf
        order = np.lexsort((tie, -sim), axis=-1)  # by similarity; a tie puts the other labels first
        hits = np.take_along_axis(relevant, order, axis=1)[:, :n - 1]  # the query itself is the last column
        found = np.cumsum(hits, axis=1)
        r = np.maximum(positives[rows], 1)
        precision_at = found / np.arange(1, n)
        within_r = np.arange(n - 1)[None, :] < r[:, None]
        map_r[rows] = np.where(finite, (hits * precision_at * within_r).sum(axis=1) / r, 0.0)
        r_prec[rows] = np.where(finite, found[np.arange(len(rows)), r - 1] / r, 0.0)
        rank[rows] = np.where(finite & hits.any(axis=1), hits.argmax(axis=1) + 1, n)
        nearest[rows] = order[:, 0]
        top[rows] = order[:, :top.shape[1]]
    if details is not None:
        details.update(scored=scored, positives=positives, rank=rank, nearest=nearest, top=top, map_r=map_r)
    out = {f"R@{k}": round(float((rank[scored] <= k).mean()), 4) for k in ks}
    return {**out, "R_precision": round(float(r_prec[scored].mean()), 4),
            "MAP@R": round(float(map_r[scored].mean()), 4), "queries": int(scored.sum())}


def first_label_each(images: list, labels: list[str], source) -> tuple[list, list[str], int]:
    """Each photo once, under the label of its first row: a photo on two rows would find itself (a tie at the top).
    -> (images, labels, rows left out), with one warning naming the first photo left out."""
    seen: dict = {}
    first = None
    for image, label in zip(images, labels):
        if image in seen and first is None:
            first = image
        seen.setdefault(image, label)
    left = len(images) - len(seen)
    if left:
        log.warning("%s: %d rows repeat a photo of an earlier row (first: %s); image->image retrieval keeps each photo "
                    "once, under its first row's label", source, left, first)
    return list(seen), list(seen.values()), left


def warn_of_singletons(labels: list[str]) -> None:
    """A label with one photo has no other photo to find: its photo is a candidate for the others' queries only."""
    counts = Counter(labels)
    alone = sorted(label for label, c in counts.items() if c == 1)
    if alone:
        log.warning("%d label%s one photo (first: %r): %s no other photo of its label to find, so it queries nothing "
                    "(it is still a candidate for the other queries)", len(alone),
                    " has" if len(alone) == 1 else "s have", alone[0], "it has" if len(alone) == 1 else "each has")


# what a copy does to image->image figures (eval.caveats.warn_of_copies says it)
COPIES_IN_I2I = ("a copy is its photo's nearest neighbour: a certain hit under the same label (R@1 reads high), a "
                 "miss under another")


def warn_of_certain_r_at_k(positives_fewest: int, photos: int, ks=KS) -> None:
    """R@K is 1.0 by construction once K reaches the worst rank a query's first hit can have: the other photos less
    its R, plus one."""
    certain = [f"R@{k}" for k in ks if k >= photos - positives_fewest]
    if certain:
        log.warning("%s %s 1.0 by construction with %d photos (K reaches past every photo of another label)",
                    ", ".join(certain), "is" if len(certain) == 1 else "are", photos)
