"""Stop 57 (pretrainscale): pretraining's ITM negatives and hard-negative mining never build an [images, captions]
matrix (100k captions: ~12 GB while mining, 1.9 GB held for the run; 600k: ~400 GB, the run could not start), and
retrieval ranks come a block of the similarity product at a time (100k captions: ~12 GB)."""

import numpy as np
import pytest

import polymodal
from polymodal import product_blocks
from polymodal.data.pairs import Pair, PairSet
from polymodal.eval.retrieval import retrieval_metrics
from polymodal.train.caption_matches import CaptionMatches, normalize_text
from polymodal.train.hard_negatives import top_columns
from polymodal.train.pretrain import CaptionData, CaptionRows, mine_pairs


def _pairs(images: int, per_image: int, seed: int = 0) -> PairSet:
    """Captions drawn from few words, so that some texts repeat within and across images (" ." and case too)."""
    rng = np.random.default_rng(seed)
    words = ["a dog", "a cat", "runs", "sits", "on grass"]

    def caption() -> str:
        text = " ".join(rng.choice(words, 2)) + (" ." if rng.random() < 0.3 else "")
        return text.capitalize() if rng.random() < 0.3 else text

    return PairSet.from_pairs(Pair(f"img{i}.jpg", caption()) for i in range(images) for _ in range(per_image))


def _positive(pairs: PairSet) -> np.ndarray:
    """The [images, captions] matrix, by its definition: image i has a caption of caption c's text."""
    texts = [normalize_text(c) for c in pairs.captions]
    return np.array([[texts[c] in {texts[x] for x in np.flatnonzero(pairs.caption_image == i)}
                      for c in range(len(texts))] for i in range(len(pairs.images))])


def test_caption_matches_give_the_rows_columns_and_counts_of_the_positive_matrix():
    pairs = _pairs(40, 3)
    positive, matches = _positive(pairs), CaptionMatches.of(pairs)
    assert 0 < positive.sum() - len(pairs) and not positive.all()  # duplicate texts across images: the data tests them
    np.testing.assert_array_equal(matches.image_rows(np.arange(40)), positive)
    np.testing.assert_array_equal(matches.image_rows(np.array([7, 3])), positive[[7, 3]])
    np.testing.assert_array_equal(matches.caption_rows(np.array([5, 0, 119])), positive[:, [5, 0, 119]].T)
    np.testing.assert_array_equal(matches.captions_per_image, positive.sum(1))
    np.testing.assert_array_equal(matches.images_per_caption, positive.sum(0))
    assert all(matches.matches(i, c) == positive[i, c] for i in range(40) for c in range(0, 120, 7))


def test_pairs_are_mined_in_blocks_as_the_whole_matrix_mined_them(monkeypatch):
    pairs = _pairs(150, 3, seed=1)
    rng = np.random.default_rng(0)
    # integer-valued embeddings: every product is exact, however a block's matmul sums it
    image_emb = rng.integers(-1000, 1000, (150, 8)).astype(np.float32)
    caption_emb = rng.integers(-1000, 1000, (450, 8)).astype(np.float32)
    sim, positive = image_emb @ caption_emb.T, _positive(pairs)
    whole = (top_columns(np.where(positive, -np.inf, sim), 5), top_columns(np.where(positive.T, -np.inf, sim.T), 5))
    shapes, rows = [], product_blocks.Product.rows
    monkeypatch.setattr(product_blocks.Product, "rows",
                        lambda p, a, b: shapes.append((b - a, p.b.shape[0])) or rows(p, a, b))
    monkeypatch.setattr(product_blocks, "BLOCK_CELLS", 1)  # the smallest blocks: 64 rows, the last overlapping
    for got, want in zip(mine_pairs(image_emb, caption_emb, pairs, 5), whole):
        np.testing.assert_array_equal(got, want)
    assert shapes == [(64, 450)] * 3  # never [150, 450]: 3 blocks of images (stop 58: they serve both directions)


def test_uniform_itm_negatives_and_their_check_need_no_positive_matrix():
    pairs = _pairs(30, 2, seed=2)
    positive = _positive(pairs)
    rows = CaptionRows(CaptionData(pairs, None, None, None), "itm", seed=0, hard=0.0)
    captions = np.arange(len(pairs))
    neg_caption, neg_image = rows._uniform(captions, np.random.default_rng(0))
    assert not positive[pairs.caption_image[captions], neg_caption].any()
    assert not positive[neg_image, captions].any()
    assert not hasattr(rows.data, "positive")
    same = PairSet.from_pairs([Pair("a.jpg", "A dog ."), Pair("b.jpg", "a dog")])  # every caption matches both
    with pytest.raises(polymodal.PolymodalError, match="at least 2 different images"):
        rows = CaptionRows(CaptionData(same, None, None, None), "itm", hard=0.0)
        rows._uniform(np.arange(2), np.random.default_rng(0))


def test_retrieval_ranks_come_a_block_at_a_time_as_from_the_whole_matrix(monkeypatch):
    rng = np.random.default_rng(3)
    image_emb = rng.integers(-50, 50, (100, 6)).astype(np.float32)  # exact products; ties, which ranks count
    text_emb = rng.integers(-50, 50, (300, 6)).astype(np.float32)
    caption_image = np.arange(300) % 100
    whole_ranks, block_ranks = {}, {}
    whole = retrieval_metrics(image_emb, text_emb, caption_image, whole_ranks, top=3)
    shapes, rows, columns = [], product_blocks.Product.rows, product_blocks.Product.columns
    monkeypatch.setattr(product_blocks, "BLOCK_CELLS", 1)
    monkeypatch.setattr(product_blocks.Product, "rows",
                        lambda p, a, b: shapes.append(rows(p, a, b).shape) or rows(p, a, b))
    monkeypatch.setattr(product_blocks.Product, "columns",
                        lambda p, a, b: shapes.append(columns(p, a, b).shape) or columns(p, a, b))
    assert retrieval_metrics(image_emb, text_emb, caption_image, block_ranks, top=3) == whole
    for name in ("t2i", "i2t", "t2i_top"):
        np.testing.assert_array_equal(block_ranks[name], whole_ranks[name])
    assert set(shapes) == {(64, 100), (64, 300)}  # never [300, 100]
