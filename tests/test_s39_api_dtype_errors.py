"""A model cast with .half() / .to(torch.bfloat16) / .double() computes in float32 anyway: dual encoders and
captioners say so in one PolymodalError (as fusion encoders already do), not a RuntimeError from deep in a tower."""

import numpy as np
import pytest
import torch

import polymodal
from polymodal.errors import PolymodalError
from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

IMAGE = np.full((32, 32, 3), 128, np.uint8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dual_encoder_in_another_dtype_is_one_clear_error(dtype):
    model = DualEncoder(DualEncoderConfig(embed_dim=32))
    model.to(dtype)
    with pytest.raises(PolymodalError, match=r"\.float\(\)"):
        model.encode_image(IMAGE)
    with pytest.raises(PolymodalError, match=r"\.float\(\)"):
        model.encode_text("a dog")
    model.float()
    assert model.encode_text("a dog").shape == (1, 32)


def test_captioner_in_half_precision_is_one_clear_error():
    model = polymodal.load("captioner")
    model.half()
    with pytest.raises(PolymodalError, match=r"\.float\(\)"):
        model.caption(IMAGE, beam=1, max_tokens=2)
    model.float()
    assert len(model.caption(IMAGE, beam=1, max_tokens=2)) == 1
