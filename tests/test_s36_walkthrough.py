"""What a new user's walkthrough found (stop 36): 0-1 float pixels a little past 1, and what the CLI says when an
--overwrite run is stopped (see test_s36_train_review)."""

import numpy as np
import pytest

from polymodal.data.images import load_image
from polymodal.errors import PolymodalError


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((40, 60, 3)).astype(np.float32)  # 0-1 pixels


def test_float_pixels_slightly_past_1_are_clipped_not_read_as_0_255(photo):
    nudged = photo.copy()
    nudged[0, 0, 0] = 1.005  # resampling's rounding: one pixel a hair over 1 made the whole image black before
    got = np.asarray(load_image(nudged))
    assert np.array_equal(got, np.asarray(load_image(np.clip(nudged, 0, 1))))
    assert got.mean() > 100  # the photo, not a black image


@pytest.mark.parametrize("scale", [1.05, 1.5])
def test_float_pixels_past_1_are_one_error(photo, scale):
    with pytest.raises(PolymodalError) as refused:
        load_image(photo * scale)
    assert "float values go up to" in str(refused.value) and "np.clip(x, 0, 1)" in str(refused.value)


def test_0_255_floats_and_0_1_floats_still_read_as_before(photo):
    assert np.array_equal(np.asarray(load_image(photo * 255)), np.asarray(load_image(photo)))
    dark = np.full((8, 8, 3), 0.0, np.float32)
    dark[0, 0] = 3.0  # a nearly black 0-255 image (max of 2 or more) stays 0-255
    assert np.asarray(load_image(dark)).max() == 3


def test_a_resized_0_1_image_that_dips_below_0_is_told_to_clip(photo):
    with pytest.raises(PolymodalError, match=r"clip them \(np.clip\(x, 0, 1\)"):
        load_image(photo - 0.2)
