"""A fusion built directly (``Cls(dims, out_dim, ...)``, as the module docs show) checks its options as
build_fusion does: hidden=0 no longer silently means out_dim, dropout 1.5 is one PolymodalError."""

import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.fusion import FUSIONS, ConcatFusion, FusionModule, GatedFusion, build_fusion, register_fusion


@pytest.mark.parametrize("make, message", [
    (lambda: ConcatFusion([8, 8], 8, hidden=0), "concat fusion: hidden must be a whole number of at least 1, got 0"),
    (lambda: ConcatFusion([8, 8], 8, 0), "concat fusion: hidden must be a whole number"),  # given by position
    (lambda: GatedFusion([8, 8], 8, dropout=1.5), "gated fusion: dropout must be a number in"),
    (lambda: FUSIONS["bilinear"]([8, 8], 8, factors=2.5), "bilinear fusion: factors must be a whole number"),
])
def test_direct_construction_checks_the_shared_options(make, message):
    with pytest.raises(PolymodalError, match=message):
        make()


def test_valid_options_and_unknown_ones_behave_as_before():
    fused = ConcatFusion([8, 4], 6, hidden=5)
    assert fused([torch.randn(2, 8), torch.randn(2, 4)]).pooled.shape == (2, 6)
    with pytest.raises(TypeError, match="nope"):
        ConcatFusion([8, 8], 8, nope=1)
    with pytest.raises(PolymodalError, match="concat fusion has no option 'nope'"):
        build_fusion("concat", [8, 8], 8, nope=1)


def test_a_registered_fusion_of_ones_own_is_checked_too():
    @register_fusion
    class Summed(FusionModule):
        name = "s41_summed"

        def __init__(self, dims, out_dim, heads: int = 2):
            super().__init__(dims, out_dim)
            self.heads = heads

    try:
        assert build_fusion("s41_summed", [4, 4], 4, heads=3).heads == 3
        with pytest.raises(PolymodalError, match="s41_summed fusion: heads must be a whole number"):
            Summed([4, 4], 4, heads=0)
    finally:
        FUSIONS.pop("s41_summed")
