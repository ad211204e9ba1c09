"""Per-sample gradients with torch.func (vmap over grad) through every fusion module with a padding mask: the
inverted-mask check read the mask's values (bool()), which vmap cannot do, so the first 16 masks failed there."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

from polymodal.errors import PolymodalError
from polymodal.fusion import FUSIONS, build_fusion


def _setup(name):
    torch.manual_seed(0)
    kw = {"heads": 2} if name in ("attention_pool", "cross_attention", "co_attention", "single_stream") else {}
    fusion = build_fusion(name, [6, 10], 8, **kw).eval()
    x0, x1 = torch.randn(3, 4, 6), torch.randn(3, 5, 10)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 2:] = False
    mask[2] = False  # a sample without text
    return fusion, x0, x1, mask


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_per_sample_gradients_with_a_mask(name):
    fusion, x0, x1, mask = _setup(name)
    params = {k: v.detach() for k, v in fusion.named_parameters()}

    def loss(p, a, b, m):
        return functional_call(fusion, p, ([a[None], b[None]], [None, m[None]])).pooled.pow(2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x0, x1, mask)
    for i in range(3):  # each sample's gradient is the one a plain backward pass gives
        fusion.zero_grad()
        loss(dict(fusion.named_parameters()), x0[i], x1[i], mask[i]).backward()
        for k, p in fusion.named_parameters():
            assert torch.allclose(per_sample[k][i], p.grad, atol=1e-5), (name, k, i)


def test_a_float_mask_under_vmap_is_one_clear_error():
    fusion, x0, x1, mask = _setup("concat")
    with pytest.raises(PolymodalError, match="float mask under torch.func.vmap"):
        vmap(lambda a, b, m: fusion([a[None], b[None]], [None, m[None]]).pooled)(x0, x1, mask.float())
