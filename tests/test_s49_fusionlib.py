"""Fusion modules as a library (stop 49): compiled and exported as they are, and an option that was read as truthy."""

import pytest
import torch
from torch import nn

from polymodal.errors import PolymodalError
from polymodal.fusion import FusionOutput, build_fusion


class _Pooled(nn.Module):
    def __init__(self, fusion) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(self, image, text, text_mask):
        return self.fusion([image, text], [None, text_mask]).pooled


def _inputs(batch=2):
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).repeat(batch // 2 + 1, 1)[:batch]
    return torch.randn(batch, 4), torch.randn(batch, 3, 6), mask


@pytest.mark.parametrize("how", ["export", "compile_fullgraph"])
def test_a_float_mask_compiles_and_exports_in_one_graph(how):
    # a 0/1 float mask (documented as accepted) met the 0/1 value check, a data-dependent branch: torch.export
    # failed with GuardOnDataDependentSymNode and compile(fullgraph=True) with "function marked as skipped"
    model = _Pooled(build_fusion("concat", [4, 6], 8).eval())
    args = _inputs()
    if how == "export":
        run = torch.export.export(model, args).module()
    else:
        run = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(run(*args), model(*args))


def test_an_additive_float_mask_is_still_refused_in_eager_calls():
    image, text, _ = _inputs()
    with pytest.raises(PolymodalError, match="values other than 0 and 1"):
        build_fusion("concat", [4, 6], 8)([image, text], [None, torch.tensor([[0.0, 0.0, -1e9], [0.0, -1e9, -1e9]])])


def test_torch_export_takes_a_fusion_module_as_it_is():
    # FusionOutput was "not a known type" to torch.export: only a wrapper returning its tensors exported
    fusion = build_fusion("co_attention", [4, 6], 8, heads=2).eval()
    image, text, mask = _inputs()
    batch = torch.export.Dim("batch")
    shapes = ([{0: batch}, {0: batch}], [None, {0: batch}])
    exported = torch.export.export(fusion, ([image, text], [None, mask.bool()]), dynamic_shapes=shapes).module()
    image, text, mask = _inputs(batch=3)
    got, want = exported([image, text], [None, mask.bool()]), fusion([image, text], [None, mask.bool()])
    assert isinstance(got, FusionOutput)
    torch.testing.assert_close(got.pooled, want.pooled)
    torch.testing.assert_close(got.tokens, want.tokens)
    assert got.modality_weights is None


@pytest.mark.parametrize("value", ["false", "no", None, 0])
def test_bilinear_normalize_takes_only_true_or_false(value):
    # --fusion-options '{"normalize": "false"}' normalised all the same (a non-empty string is true)
    with pytest.raises(PolymodalError, match=f"bilinear fusion: normalize must be true or false, got {value!r}"):
        build_fusion("bilinear", [4, 6], 8, normalize=value)
    pooled = build_fusion("bilinear", [4, 6], 8, normalize=False)([torch.randn(2, 4), torch.randn(2, 6)]).pooled
    assert pooled.shape == (2, 8)
