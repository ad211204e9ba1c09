"""polymodal.load(RUN/checkpoint.pt) or polymodal.load(EXPORT/graph.onnx): say what to pass (RUN/model, the export
folder), not only that the file cannot be read as a CLIP checkpoint."""

import json

import pytest

import polymodal
from polymodal.errors import PolymodalError


def test_a_run_checkpoint_points_to_the_run_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"type": "dual_encoder"}))
    (tmp_path / "checkpoint.pt").write_bytes(b"not really a checkpoint")
    with pytest.raises(PolymodalError, match=r"training run's checkpoint.*model: pass that"):
        polymodal.load(tmp_path / "checkpoint.pt")


def test_one_graph_of_an_export_points_to_the_export_folder(tmp_path):
    (tmp_path / "onnx_config.json").write_text(json.dumps({"type": "onnx_fusion_encoder"}))
    (tmp_path / "grid.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(PolymodalError, match="one graph of an ONNX export; pass the export folder"):
        polymodal.load(tmp_path / "grid.onnx")
