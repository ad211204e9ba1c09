"""Under torch.autocast a fusion takes float32 or autocast's own dtype; a float64 input (torch.from_numpy) is one
clear error naming it, as outside autocast, not "mat1 and mat2 must have the same dtype" from the first matmul."""

import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.fusion import FUSIONS, build_fusion


def _fusion(name):
    torch.manual_seed(0)
    kw = {"heads": 2} if name in ("attention_pool", "cross_attention", "co_attention", "single_stream") else {}
    return build_fusion(name, [6, 10], 8, **kw).eval()


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_float64_inputs_under_autocast_are_named(name):
    fusion = _fusion(name)
    x0, x1 = torch.randn(2, 4, 6), torch.randn(2, 5, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(PolymodalError, match=r"modality 0 is torch.float64; under autocast"):
            fusion([x0.double(), x1])
        # float32, autocast's own dtype and another half dtype (float16 under bf16: 7 of 9 fusions ran it before
        # the check, concat and gated failed in torch.cat) all run
        for a, b in ((x0, x1), (x0.bfloat16(), x1), (x0, x1.half()), (x0.half(), x1.half())):
            assert torch.isfinite(fusion([a, b]).pooled.float()).all()
