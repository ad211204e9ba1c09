"""polymodal.load("lite", top_k=...) checks top_k at load: 0 used to load and embed every image as a zero vector
(silently), and -1, 1001, 2.5 or "3" loaded and failed at the first image with a RuntimeError/TypeError from topk."""

import numpy as np
import pytest

import polymodal
from polymodal.errors import PolymodalError


@pytest.mark.parametrize("top_k", [0, -1, 1001, 2.5, "3", True])
def test_lite_refuses_a_top_k_it_cannot_use_at_load(top_k):
    with pytest.raises(PolymodalError, match="top_k"):
        polymodal.load("lite", top_k=top_k)


def test_lite_top_k_in_range_embeds_unit_vectors():
    image = np.full((32, 32, 3), 100, np.uint8)
    for k in (1, 1000):
        e = polymodal.load("lite", top_k=k).encode_image(image)
        assert np.isclose(np.linalg.norm(e), 1.0, atol=1e-5)
