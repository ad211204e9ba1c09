"""fp32 inference of EfficientNet-Lite0 runs a BatchNorm-folded copy (polymodal.encoders.fused_lite): the eager
features to ~1e-5, never stale after the weights change, and never on a path that needs gradients."""

import numpy as np
import pytest
import torch

from polymodal.data.samples import sample_photos
from polymodal.encoders.efficientnet import LITE0_TRANSFORM, EfficientNetLite0


@pytest.fixture(scope="module")
def pixels():
    return torch.from_numpy(LITE0_TRANSFORM([a for a, _ in list(sample_photos().values())[:6]]))


@pytest.fixture()
def tower():
    return EfficientNetLite0()


def _eager(tower, pixels):
    with torch.enable_grad():
        return tower.spatial(pixels).detach()


def test_inference_matches_the_eager_tower_on_photos(tower, pixels):
    with torch.inference_mode():
        fused = tower.spatial(pixels)
    eager = _eager(tower, pixels)
    assert tower._fused is not None  # the folded copy ran, not the eager module
    np.testing.assert_allclose(fused.numpy(), eager.numpy(), atol=2e-4, rtol=0)  # features reach ~6
    assert torch.equal(tower.net._fc(fused.mean((2, 3))).argmax(1), tower.net._fc(eager.mean((2, 3))).argmax(1))


def test_a_weight_changed_in_place_or_loaded_is_used_at_once(tower, pixels):
    with torch.no_grad():
        before = tower.spatial(pixels)
        tower.net._blocks[15]._project_conv.weight.mul_(0.5)  # what an optimizer step does to a trained block
        after = tower.spatial(pixels)
    assert not torch.allclose(before, after)
    np.testing.assert_allclose(after.numpy(), _eager(tower, pixels).numpy(), atol=2e-4, rtol=0)
    state = EfficientNetLite0().net.state_dict()
    tower.net.load_state_dict(state)
    with torch.no_grad():
        np.testing.assert_allclose(tower.spatial(pixels).numpy(), before.numpy(), atol=2e-4, rtol=0)


def test_gradients_flow_through_the_eager_module(tower, pixels):
    head = tower.net._conv_head
    head.weight.requires_grad_(True)
    tower.spatial(pixels[:2]).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert tower._fused is None  # no inference ran, so no folded copy was ever built


def test_a_tower_built_under_inference_mode_runs(pixels):
    with torch.inference_mode():  # its weights are inference tensors, which keep no version counter
        tower = EfficientNetLite0()
        first = tower.spatial(pixels[:2])
    with torch.no_grad():
        np.testing.assert_allclose(tower.spatial(pixels[:2]).numpy(), first.numpy(), atol=1e-6)


def test_an_export_traces_the_registered_weights_not_the_folded_copy(lite, pixels, tmp_path):
    """onnxruntime's int8 quantizers work on a graph's initializers: traced from the folded copy, the weights became
    Constant nodes (2 initializers) and int8_dynamic failed."""
    onnx = pytest.importorskip("onnx")
    from polymodal.export.graphs import ImageGraph, export_graph

    with torch.inference_mode():
        lite.image_tower.spatial(pixels[:2])  # the folded copy exists when the export runs, as in export_onnx
    path = export_graph(ImageGraph(lite), (pixels[:2].clone(),), ["pixels"], tmp_path / "image.onnx") or tmp_path / "image.onnx"
    assert len(onnx.load(str(path)).graph.initializer) > 50


def test_train_mode_loads_and_copies_use_the_current_weights(tower, pixels):
    import copy

    with torch.inference_mode():
        first = tower.spatial(pixels[:2])
        tower.load_state_dict({k: v * 0.5 if v.is_floating_point() else v for k, v in tower.state_dict().items()})
        assert not torch.allclose(tower.spatial(pixels[:2]), first)  # inference tensors keep no version: reloaded
    assert tower._fused is not None and copy.deepcopy(tower)._fused is None  # a copy carries no folded copy
    tower.net.train()  # BatchNorm in train mode uses batch statistics: only the eager module can
    with torch.no_grad():
        assert tower._inference_net() is tower.net
