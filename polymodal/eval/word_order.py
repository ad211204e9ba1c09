"""Word-order tests for an embedding model (ARO's Flickr-Order, Yuksekgonul et al. 2023): does a photo's caption
outscore scrambled copies of its own words? A bag-of-words model cannot tell them apart (chance is 1 in 5).

Kinds: `swap` (two content words exchanged, as `--hard-negatives swap` trains on), `trigrams` (word trigrams
reordered), `within` (words reordered inside each trigram), `shuffle` (all words).
"""

from __future__ import annotations

import random
from typing import Collection, Sequence

import numpy as np

from polymodal.data.negatives import same_text, swapped_captions

KINDS = ("swap", "trigrams", "within", "shuffle")
COPIES = 4  # scrambled copies per caption


def _scramble(kind: str, words: list[str], rng: random.Random) -> list[str]:
    if kind == "trigrams":
        grams = [words[i : i + 3] for i in range(0, len(words), 3)]
        rng.shuffle(grams)
        return [w for g in grams for w in g]
    if kind == "within":
        out = []
        for i in range(0, len(words), 3):
            gram = words[i : i + 3]
            rng.shuffle(gram)
            out += gram
        return out
    words = list(words)
    rng.shuffle(words)
    return words


def scrambled(caption: str, kind: str, n: int = COPIES, seed: int = 0, exclude: Collection[str] = ()) -> list[str]:
    """Up to n distinct scrambled copies of caption that differ from it (fewer when it has too few words). Compared
    as `same_text` forms (case, spacing and a final period aside): a copy that reads as the caption itself (words put
    back in their order, joined by single spaces: "a  dog" -> "a dog") or as a text in ``exclude`` (the photo's other
    captions: "a man next to a woman" swapped may be one) would be a true caption counted as a wrong one."""
    own = {same_text(caption), *map(same_text, exclude)}
    if kind == "swap":
        # --hard-negatives swap trains with seed 0: on its own training captions about half of these copies are
        # ones it trained on, so measure on held-out pairs
        return swapped_captions(caption, n, seed=seed + 1, exclude=own)
    rng, words, out, seen = random.Random(f"{seed}-{kind}-{caption}"), caption.split(), [], set(own)
    for _ in range(20 * n):
        text = " ".join(_scramble(kind, words, rng))
        if same_text(text) not in seen:
            seen.add(same_text(text))
            out.append(text)
        if len(out) == n:
            break
    return out


def word_order_accuracy(model, images: Sequence, captions: Sequence[str], kinds: Sequence[str] = KINDS,
                        image_emb: np.ndarray | None = None,
                        other_captions: Sequence[Collection[str]] | None = None) -> dict:
    """{"order/KIND": share of photos whose caption scores strictly above all its scrambled copies, "order/KIND_n":
    photos tested for that kind, ...}. `captions[i]` describes `images[i]`; captions with fewer than 4 copies of a
    kind are left out of that kind. `image_emb`: the images' embeddings, if already computed. `other_captions[i]`:
    the other captions of `images[i]`, never used as scrambled copies."""
    image_emb = np.asarray(model.encode_image(list(images)) if image_emb is None else image_emb)
    others = [()] * len(captions) if other_captions is None else other_captions
    out: dict = {}
    for kind in kinds:
        rows = [(i, [c, *copies]) for i, c in enumerate(captions)
                if len(copies := scrambled(c, kind, exclude=others[i])) == COPIES]
        out[f"order/{kind}_n"] = len(rows)
        if not rows:
            out[f"order/{kind}"] = None
            continue
        text_emb = np.asarray(model.encode_text([t for _, texts in rows for t in texts])).reshape(len(rows), COPIES + 1, -1)
        scores = np.einsum("rkd,rd->rk", text_emb, image_emb[[i for i, _ in rows]])
        out[f"order/{kind}"] = float(np.mean(scores[:, 0] > scores[:, 1:].max(1)))  # a tie is no win
    return out
