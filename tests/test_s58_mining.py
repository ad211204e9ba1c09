"""Stop 58 (mining): hard negatives from one pass over the image x caption product (each cell computed once, both
directions), scored without a float64 copy of every block, with the same results as before, exact ties included;
retrieval's t2i ranks and t2i_top from the same row blocks."""

import numpy as np
import pytest

from polymodal import product_blocks
from polymodal.data.pairs import Pair, PairSet
from polymodal.eval.retrieval import retrieval_metrics
from polymodal.train import hard_negatives
from polymodal.train.caption_matches import CaptionMatches, normalize_text
from polymodal.train.pretrain import mine_pairs


def _reference(image_emb: np.ndarray, caption_emb: np.ndarray, pairs: PairSet, k: int) -> tuple:
    """Mining as it always was, plainly: the whole product, the positive matrix by its definition, each row's
    argpartition over a float64 copy, then a stable sort by score."""
    texts = [normalize_text(c) for c in pairs.captions]
    of_image = [{texts[x] for x in np.flatnonzero(pairs.caption_image == i)} for i in range(len(pairs.images))]
    positive = np.array([[text in own for text in texts] for own in of_image])
    sim = image_emb @ caption_emb.T

    def mine(similarity: np.ndarray, positive: np.ndarray) -> np.ndarray:
        scores, most = np.where(positive, -np.inf, similarity.astype(np.float64)), min(k, (~positive).sum(1).min())
        top = np.argpartition(-scores, most - 1, axis=1)[:, :most]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    return mine(sim, positive), mine(sim.T, positive.T)


def _pairs(images: int, per_image: int, rng: np.random.Generator) -> PairSet:
    """Few distinct texts: duplicate captions within and across images."""
    words = ["a dog", "a cat", "runs", "sits"]
    return PairSet.from_pairs(Pair(f"img{i}.jpg", " ".join(rng.choice(words, 2)))
                              for i in range(images) for _ in range(per_image))


@pytest.mark.parametrize("cells, dense", [(product_blocks.BLOCK_CELLS, 8), (1, 8), (1, 0), (1, 10**9)])
def test_mining_equals_the_plain_reference_on_ties_duplicates_nan_and_a_large_k(monkeypatch, cells, dense):
    monkeypatch.setattr(product_blocks, "BLOCK_CELLS", cells)  # 1: 64-row blocks, the last one overlapping
    monkeypatch.setattr(hard_negatives, "DENSE", dense)  # 0: blocks merged whole, 10**9: a hit at a time
    for seed in range(6):
        rng = np.random.default_rng(seed)
        images, per_image = int(rng.integers(70, 160)), int(rng.integers(1, 4))
        pairs = _pairs(images, per_image, rng)
        # integer values from a few: exact products and many exact ties; repeated rows: duplicate photos
        image_emb = rng.integers(-2, 3, (images, 3)).astype(np.float32)
        caption_emb = rng.integers(-2, 3, (len(pairs), 3)).astype(np.float32)
        image_emb[1], caption_emb[-1] = image_emb[0], caption_emb[0]
        if seed % 2:
            image_emb[5, 0], caption_emb[7, 1] = np.nan, np.nan  # NaN ranks last, as in argpartition
        k = [1, 8, 500][seed % 3]  # 500: more than any query has, clipped
        want = _reference(image_emb, caption_emb, pairs, k)
        for got, want in zip(mine_pairs(image_emb, caption_emb, pairs, k), want):
            np.testing.assert_array_equal(got, want)


def test_exact_ties_keep_argpartitions_order_not_the_columns_order():
    pairs = PairSet.from_pairs(Pair(f"img{i}.jpg", f"caption {i}") for i in range(300))
    flat = np.ones((300, 2), dtype=np.float32)  # every score ties
    got, want = mine_pairs(flat, flat, pairs, 3), _reference(flat, flat, pairs, 3)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert got[0][0].tolist() == want[0][0].tolist()  # argpartition's pick, e.g. [280, 281, 282] on numpy 2.4


def test_mining_computes_each_product_cell_once_for_both_directions(monkeypatch):
    """Mining each direction apart computed the product twice (20k captions: 4-5 s of 9-11 s)."""
    rng = np.random.default_rng(0)
    pairs = PairSet.from_pairs(Pair(f"img{i // 2}.jpg", f"caption {i}") for i in range(600))
    image_emb, caption_emb = (rng.standard_normal((n, 8)).astype(np.float32) for n in (300, 600))
    cells = []
    for name in ("rows", "columns", "columns_at"):
        method = getattr(product_blocks.Product, name)
        monkeypatch.setattr(product_blocks.Product, name,
                            lambda p, *a, _m=method: cells.append((out := _m(p, *a)).size) or out)
    monkeypatch.setattr(product_blocks, "BLOCK_CELLS", 100 * 600)  # 100-row blocks: never the whole product
    got = mine_pairs(image_emb, caption_emb, pairs, 4)
    assert sum(cells) == 300 * 600
    for a, b in zip(got, _reference(image_emb, caption_emb, pairs, 4)):
        np.testing.assert_array_equal(a, b)


def test_retrieval_ranks_and_top_come_from_one_pass_over_the_caption_rows(monkeypatch):
    rng = np.random.default_rng(1)
    image_emb, text_emb = (rng.standard_normal((n, 6)).astype(np.float32) for n in (100, 400))
    caption_image = np.arange(400) % 100
    plain = {}
    metrics = retrieval_metrics(image_emb, text_emb, caption_image, plain, top=3)
    rows, method = [], product_blocks.Product.rows
    monkeypatch.setattr(product_blocks.Product, "rows", lambda p, a, b: rows.append(b - a) or method(p, a, b))
    monkeypatch.setattr(product_blocks, "BLOCK_CELLS", 1)
    blocked = {}
    assert retrieval_metrics(image_emb, text_emb, caption_image, blocked, top=3) == metrics
    assert sum(rows) == 400 + 48  # once (400 captions: 64-row blocks, the last overlapping by 48), not twice
    for name in ("t2i", "i2t", "t2i_top"):
        np.testing.assert_array_equal(blocked[name], plain[name])


def test_image_captions_are_the_true_cells_of_image_rows():
    pairs = _pairs(30, 3, np.random.default_rng(2))
    matches = CaptionMatches.of(pairs)
    images = np.array([4, 0, 29, 4])
    dense = np.zeros((4, len(pairs)), dtype=bool)
    dense[matches.image_captions(images)] = True
    np.testing.assert_array_equal(dense, matches.image_rows(images))
    assert len(matches.image_captions(images)[0]) == matches.image_rows(images).sum()  # each cell once
