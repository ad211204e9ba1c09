"""Stop 56's review of its own change: a CLIP checkpoint of a wrapped model (open_clip trained on several GPUs:
"module." keys inside "state_dict"; torch.compile's "_orig_mod.") is known by its keys as the loader reads it, so
serve without an index refuses it before the load too; the export gate never says "unchanged" of a drop over the
limit, and the pair's drop that makes fp32 serve the text tower keeps its figure on its side of the limit."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import PolymodalError
from test_clip_checkpoints import hf_folder as _hf_folder_fixture
from test_s55_serve5 import no_load as _no_load_fixture

hf_folder, no_load = _hf_folder_fixture, _no_load_fixture  # the fixtures, under their own names


# -- 1. CLIP checkpoints of wrapped models ---------------------------------------------------------------------------
def _wrapped_checkpoints(tmp_path) -> list:
    from safetensors.numpy import save_file

    conv = {"visual.conv1.weight": torch.zeros(2, 3, 2, 2)}
    epoch = tmp_path / "epoch_3.pt"  # as open_clip's training saves one run with torchrun: the model under DDP
    torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in conv.items()},
                "optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4}]}}, epoch)
    compiled = tmp_path / "compiled.pt"
    torch.save({"module._orig_mod." + k: v for k, v in conv.items()}, compiled)
    tensors = tmp_path / "ddp.safetensors"
    save_file({"module." + k: v.numpy() for k, v in conv.items()}, str(tensors))
    folder = tmp_path / "one-file"
    folder.mkdir()
    (folder / "epoch_3.pt").write_bytes(epoch.read_bytes())
    return [epoch, compiled, tensors, folder]


def test_a_wrapped_models_clip_checkpoint_is_refused_before_loading(no_load, tmp_path):
    from polymodal.models.clip import read_state_dict
    from polymodal.models.clip_keys import state_dict_keys
    from polymodal.registry import names_an_embedder
    from polymodal.serve import create_app

    for path in _wrapped_checkpoints(tmp_path):
        if path.is_file():  # the keys as the loader reads them
            assert state_dict_keys(path) == list(read_state_dict(path)) == ["visual.conv1.weight"], path
        assert names_an_embedder(path), path
        with pytest.raises(PolymodalError, match="embeds images for an index: pass --db DB"):
            create_app(path, None)  # polymodal.load would raise _NotLoaded


def test_a_file_that_is_no_state_dict_is_none_to_both(tmp_path):
    from polymodal.models.clip import read_state_dict
    from polymodal.models.clip_keys import is_clip_checkpoint, state_dict_keys

    odd = tmp_path / "odd.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1), 3: torch.zeros(1)}, odd)  # a key that is not a name
    assert state_dict_keys(odd) == [] and not is_clip_checkpoint(odd)
    with pytest.raises(PolymodalError, match="does not hold a state dict"):
        read_state_dict(odd)


# -- 2. the export gate at its limit ---------------------------------------------------------------------------------
@pytest.mark.parametrize("drop, limit, shown", [(0.03, 0.0, "drop 0.03 points (over the 0-point limit)"),
                                                (0.04, 0.02, "drop 0.04 points (over the 0.02-point limit)")])
def test_a_small_drop_over_the_limit_is_not_unchanged(drop, limit, shown):
    from polymodal.export.onnx_export import gate

    status, reason = gate(2.0, 1.0, drop, limit, metric="CIDEr-D")
    assert status == "rejected" and f"CIDEr-D {shown}" in reason and "unchanged" not in reason
    assert gate(2.0, 1.0, 0.03, 1.0)[1].endswith("R@5 unchanged (within the 1-point limit)")  # within: as before


def test_the_pairs_drop_that_makes_fp32_serve_keeps_its_side_of_the_limit(hf_folder, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from test_s49_deploy import export_with_pair_drop

    from polymodal.models.clip import load_clip

    _, text = export_with_pair_drop(load_clip(hf_folder), tmp_path / "out", monkeypatch, 1.04)  # over 1, a little
    assert text["reason"].endswith("R@5 dropped 1.04 points (over the 1-point limit): fp32 serves"), text["reason"]
