"""Models (s42): a built-in model saved unchanged keeps its fp16 weights and so its version (its copy was saved as
fp32, with a new key that the indexes built with the original refused); weights training moved past what fp16 holds
are saved as they are."""

import torch
from safetensors import safe_open

import polymodal


def _dtypes(folder) -> set:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {str(f.get_tensor(k).dtype) for k in f.keys()}


def test_a_builtin_saved_unchanged_keeps_its_key_and_a_trained_one_its_precision(tmp_path):
    model = polymodal.load("default")
    original = model.key
    model.save(tmp_path / "copy")
    assert polymodal.load(str(tmp_path / "copy")).key == original
    assert _dtypes(tmp_path / "copy") == {"torch.float16"}
    name, param = next((n, p) for n, p in model.named_parameters() if n in model.trained_state() and p.dim() == 2)
    with torch.no_grad():
        param[0, 0].add_(1e-5)  # a step no fp16 value holds: that tensor is kept in fp32
    model.save(tmp_path / "trained")
    trained = polymodal.load(str(tmp_path / "trained"))
    assert trained.key != original and trained.key == model.key  # (save gives the model its new version)
    assert _dtypes(tmp_path / "trained") == {"torch.float16", "torch.float32"}
    torch.testing.assert_close(dict(trained.named_parameters())[name], param, atol=0, rtol=0)
