"""The shipped `default` model (contrastive heads trained on Flickr8k + COCO captions) loads offline and works."""

import numpy as np
import pytest

import polymodal


@pytest.fixture(scope="module")
def default():
    return polymodal.load("default")  # loaded once for both tests: neither changes it


def test_default_loads_and_retrieves_unseen_photos(default, gallery):
    model = default
    assert model.dim == 384 and model.key.startswith("default@")
    names = ["cat", "coffee", "motorcycle", "flower", "astronaut"]
    img = model.encode_image([gallery / f"{n}.jpg" for n in names])
    txt = model.encode_text(["a cat lying down", "a cup of coffee", "a motorcycle", "a flower", "a man in a space suit"])
    assert img.dtype == np.float32 and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    ranks = (-(txt @ img.T)).argsort(axis=1)
    # These photos are not in the training data; each caption's photo should be among its top 2 of 5.
    hits = [i in ranks[i, :2] for i in range(len(names))]
    assert sum(hits) >= 4, ranks


def test_default_prefers_a_caption_over_its_word_swapped_copies(default, gallery):
    """`default` is trained with word-swapped hard negatives (recipes/default.json: hard_negatives swap). On the
    sample photos (not in its training data) the true caption should outscore its swapped copies for most photos;
    the heads trained without them managed 5 of 13."""
    from polymodal.data.negatives import swapped_captions
    from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS

    model = default
    hits, total = 0, 0
    for name, (_, caption) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items():
        copies = swapped_captions(caption, 3)
        if copies:
            scores = model.encode_text([caption, *copies]) @ model.encode_image([gallery / f"{name}.jpg"])[0]
            hits, total = hits + int(scores.argmax() == 0), total + 1
    assert total == 13 and hits >= 8, (hits, total)
