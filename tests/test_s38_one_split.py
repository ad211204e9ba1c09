"""Stop 38: contrastive/captioning, pretraining and VQA draw their validation photos with one function
(data.pairs.held_out_images); the splits are the ones each drew before, so runs started earlier resume on them."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.data.pairs import Pair, PairSet, split_by_image
from polymodal.errors import PolymodalError
from polymodal.train.pretrain import split_pairs_by_image
from polymodal.train.vqa import QARow
from polymodal.train.vqa import split_by_image as split_qa_by_image


def _before_pairs(n, fraction, seed):  # data.pairs.split_by_image before stop 38 (photos without copies)
    n_val = int(round(n * fraction))
    if fraction > 0:
        n_val = min(max(1, n_val), n - 1)
    order = np.random.default_rng([seed]).permutation(n)
    return np.sort(order[n_val:]).tolist(), np.sort(order[:n_val]).tolist()


def _before_pretrain(n, fraction, seed):  # train.pretrain.split_pairs_by_image before stop 38
    n_val = min(n - 1, max(1, round(fraction * n)))
    val = np.random.default_rng(seed).permutation(n)[:n_val]
    return np.setdiff1d(np.arange(n), val).tolist(), np.sort(val).tolist()


def _before_vqa(images, fraction, seed):  # train.vqa.split_by_image before stop 38: the held-out image names
    images = sorted(images)
    n_val = min(len(images) - 1, max(1, round(fraction * len(images))))
    return set(np.random.default_rng(seed).permutation(images)[:n_val].tolist())


@pytest.mark.parametrize("n,fraction,seed", [(2, 0.1, 0), (7, 0.25, 3), (40, 0.1, 0), (41, 0.5, 9), (13, 0.0, 1),
                                             (100, 0.99, 2)])
def test_the_three_splits_draw_what_they_drew_before(n, fraction, seed):
    pairs = PairSet.from_pairs([Pair(f"/nowhere/{i:03d}.jpg", f"caption {i}") for i in range(n)])  # no files: no copies
    train, val = split_by_image(pairs, fraction, seed)
    want_train, want_val = _before_pairs(n, fraction, seed)
    assert (train.images, val.images) == ([pairs.images[i] for i in want_train], [pairs.images[i] for i in want_val])
    if fraction == 0:
        return
    train, val = split_pairs_by_image(pairs, fraction, seed)
    want_train, want_val = _before_pretrain(n, fraction, seed)
    assert (train.images, val.images) == ([pairs.images[i] for i in want_train], [pairs.images[i] for i in want_val])
    rows = [QARow(f"/nowhere/{i % n:03d}.jpg", f"q{i}", "yes") for i in range(2 * n)]  # two questions a photo
    train_rows, val_rows = split_qa_by_image(rows, fraction, seed)
    held_out = _before_vqa({r.image for r in rows}, fraction, seed)
    assert {r.image for r in val_rows} == held_out and len(val_rows) == 2 * len(held_out)
    assert not {r.image for r in train_rows} & held_out and len(train_rows) + len(val_rows) == len(rows)


def test_one_photo_cannot_be_split_and_each_says_how_to_validate():
    pairs = PairSet.from_pairs([Pair("/nowhere/a.jpg", "a cat")])
    with pytest.raises(PolymodalError, match="cannot split 1 image.*--val-pairs FILE"):
        split_by_image(pairs, 0.1)
    with pytest.raises(PolymodalError, match="cannot split 1 image.*pass --val-pairs$"):
        split_pairs_by_image(pairs, 0.1)
    with pytest.raises(PolymodalError, match="cannot split 1 image.*pass --val-qa$"):
        split_qa_by_image([QARow("/nowhere/a.jpg", "is it?", "yes")], 0.1)
