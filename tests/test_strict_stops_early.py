"""eval --strict stops at the first unreadable image instead of encoding the rest (whose figures it would refuse)."""

import numpy as np
import pytest

from polymodal.errors import PolymodalError
from polymodal.eval.per_item import strict_reading
from polymodal.eval.retrieval import encode_readable
from polymodal.models.inputs import Unreadable, each_or_error, stop_at_first_unreadable


class CountingModel:
    """encode_image of names: 'bad' cannot be read; counts the images it was asked for."""

    def __init__(self):
        self.asked = 0

    def encode_image(self, images):
        self.asked += len(images)
        if "bad" in images:
            raise PolymodalError("cannot read bad")
        return np.ones((len(images), 2), np.float32)


IMAGES = ["ok"] * 40 + ["bad"] + ["ok"] * 200


def test_without_strict_the_pass_goes_on_and_leaves_the_image_out():
    model = CountingModel()
    emb, rows = encode_readable(model, IMAGES, batch_size=32)
    assert len(rows) == len(IMAGES) - 1 and 40 not in rows
    assert model.asked == len(IMAGES) + 32  # the bad batch once whole, then one by one


def test_inside_stop_at_first_unreadable_the_pass_ends_at_the_bad_image():
    model = CountingModel()
    with pytest.raises(Unreadable, match="cannot read bad"), stop_at_first_unreadable():
        encode_readable(model, IMAGES, batch_size=32)
    assert model.asked == 64 + 9  # two batches, then the second one's items up to the bad one
    assert each_or_error(lambda chunk: chunk, [1, 2]) == [1, 2]  # and only inside it


@pytest.mark.parametrize("strict", [True, False])
def test_strict_reading_follows_the_flag(strict):
    class Args:
        pass

    args = Args()
    args.strict = strict
    model = CountingModel()
    if strict:
        with pytest.raises(PolymodalError, match=r"^--strict: an unreadable image: cannot read bad; fix the data"):
            with strict_reading(args):
                encode_readable(model, IMAGES, batch_size=32)
    else:
        with strict_reading(args):
            assert len(encode_readable(model, IMAGES, batch_size=32)[1]) == len(IMAGES) - 1
