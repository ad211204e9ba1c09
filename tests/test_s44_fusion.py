"""Fusion review (stop 44): settings that failed late or as a torch TypeError are one clear error up front."""

import pytest

from polymodal.errors import PolymodalError
from polymodal.fusion import ConcatFusion, build_fusion
from polymodal.models.fusion_encoder import FusionEncoderConfig


def test_single_stream_default_max_len_below_a_large_grid_is_refused_at_once():
    # 768 px -> a 24x24 grid of 576 cells, over the default max_len of 512: this failed at the first training step,
    # after every photo had been encoded and cached
    with pytest.raises(PolymodalError, match=r"max_len 512 \(its default\) is below the 576 tokens.*max_len=576"):
        FusionEncoderConfig(fusion="single_stream", image_size=768).validate()
    FusionEncoderConfig(fusion="single_stream", image_size=768, fusion_options={"max_len": 576}).validate()
    FusionEncoderConfig(fusion="single_stream", image_size=704).validate()  # 22x22 = 484 cells fit the default
    FusionEncoderConfig(fusion="co_attention", image_size=768).validate()  # no max_len elsewhere


@pytest.mark.parametrize("name, option", [("single_stream", "max_len"), ("tensor", "max_size"), ("tensor", "hidden")])
def test_a_null_size_option_is_one_clear_error(name, option):
    # --fusion-options '{"max_len": null}' was a TypeError traceback from torch.randn (or from list(None))
    said = rf"{name} fusion: {option} must be a whole number of at least 1, got None"
    with pytest.raises(PolymodalError, match=said):
        build_fusion(name, [16, 16], 16, **{option: None})


def test_none_still_means_the_default_where_the_module_says_so():
    assert build_fusion("concat", [4, 4], 8, hidden=None).mlp[0].out_features == 8
    assert build_fusion("tensor", [4, 4], 8, post_hidden=None).post[1].out_features == 8
    build_fusion("late", [4, 4], 8, hidden=None, weights=None)

    class PassesOn(ConcatFusion):  # a subclass passing its options on as **kw: the parent's None defaults hold
        name = "s44_passes_on"

        def __init__(self, dims, out_dim, **kw):
            super().__init__(dims, out_dim, **kw)

    assert PassesOn([4, 4], 8, hidden=None).mlp[0].out_features == 8
