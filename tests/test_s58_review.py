"""Stop 58 (review of the one-pass mining): inputs the old code took that the new one refused. Integer embeddings
(the old mining scored a float64 copy; -inf cannot mask an integer block) and an empty retrieval set (np.split of
nothing is one piece: "1 of 0 images have no caption")."""

import numpy as np
import pytest

from polymodal import product_blocks
from polymodal.data.pairs import Pair, PairSet
from polymodal.eval.retrieval import retrieval_metrics
from polymodal.train.pretrain import mine_pairs


@pytest.mark.parametrize("cells", [product_blocks.BLOCK_CELLS, 1])  # the whole product, and 64-row blocks
def test_integer_embeddings_are_mined_as_their_float64_values(monkeypatch, cells):
    monkeypatch.setattr(product_blocks, "BLOCK_CELLS", cells)
    rng = np.random.default_rng(0)
    pairs = PairSet.from_pairs(Pair(f"img{i}.jpg", f"caption {i % 50}") for i in range(100))  # duplicate texts
    image_emb, caption_emb = rng.integers(-2, 3, (100, 4)), rng.integers(-2, 3, (100, 4))  # exact ties too
    got = mine_pairs(image_emb, caption_emb, pairs, 5)
    for a, b in zip(got, mine_pairs(image_emb.astype(np.float64), caption_emb.astype(np.float64), pairs, 5)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the mean of no ranks
def test_an_empty_retrieval_set_gives_nan_figures_not_a_missing_caption_error():
    ranks = {}
    empty = np.zeros((0, 4), dtype=np.float32)
    metrics = retrieval_metrics(empty, empty, np.zeros(0, dtype=np.int64), ranks, top=3)
    assert len(metrics) == 8 and all(np.isnan(v) for v in metrics.values())
    assert [len(ranks[name]) for name in ("t2i", "i2t", "t2i_top")] == [0, 0, 0]
