"""Stop 49, deployment review (export, serve, the ONNX runtime).

- An embedding export whose int8 text graph passed the gate alone, but together with the image graph's variant
  dropped R@5 past the limit, serves the text graph in fp32: its report said "a faster kept variant serves" for
  that text variant (seen on `lite` over 200 Flickr8k pairs: image int8_static, text int8_dynamic kept, fp32 served).
- A graph stamped with a newer IR version or opset than this onnxruntime knows (made by a newer exporter) is a
  "cannot run on this onnxruntime" error naming both, not "damaged, export again".
"""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("onnxruntime")

from conftest import skip_unless_clip_exports, skip_unless_int8_loaded  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from test_clip_checkpoints import make_tiny_clip

    from polymodal.models.clip import load_clip

    return load_clip(make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip"))


def export_with_pair_drop(model, out, monkeypatch, drop: float) -> tuple[dict, dict]:
    """An int8 export of ``model`` whose variants each pass the gate while the pair of them drops ``drop`` points ->
    (the report, the text variant's row); skipped where int8 graphs cannot be made or loaded here."""
    skip_unless_clip_exports()
    import polymodal.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "gate", lambda *a, **k: ("kept", "stub gate: kept"))
    monkeypatch.setattr(onnx_export, "paired_speed", lambda *a, **k: (300.0, 100.0))
    monkeypatch.setattr(onnx_export, "_drop", lambda reference, metrics: drop)  # every pair drops by it
    val = onnx_export.validation_set(None)
    val = dataclasses.replace(val, images=val.images[:4], captions=val.captions[:4],
                              caption_image=val.caption_image[:4])
    report = onnx_export.export_onnx(model, out, val, variants=["int8_dynamic"], timing_seconds=0.02)
    for row in report["tries"]:
        skip_unless_int8_loaded(row)
    return report, next(r for r in report["tries"] if (r["tower"], r["variant"]) == ("text", "int8_dynamic"))


def test_a_text_variant_not_served_for_the_pairs_drop_says_why(tiny_clip, tmp_path, monkeypatch):
    report, text = export_with_pair_drop(tiny_clip, tmp_path / "out", monkeypatch, 5.0)  # past the limit
    assert report["served"] == {"image": "int8_dynamic", "text": "fp32"}
    assert text["status"] == "kept (not served)"
    assert "a faster kept variant serves" not in text["reason"]
    assert text["reason"].endswith("with the image graph's int8_dynamic R@5 dropped 5.0 points (over the 1-point "
                                   "limit): fp32 serves")
    assert text["reason"] in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("stamp, said", [("ir", "the graph's IR version is 99, this onnxruntime reads up to"),
                                         ("opset", "the graph uses opset 99, this onnxruntime knows up to")])
def test_a_graph_newer_than_this_onnxruntime_is_not_called_damaged(tmp_path, stamp, said):
    """An export from a newer onnx/onnxruntime (a graph stamped with a newer IR version or opset) was "an incomplete
    or damaged export; export the model again", and the reason was cut off behind onnxruntime's C++ signature."""
    import json

    from onnx import TensorProto, helper, save

    from polymodal.errors import PolymodalError
    from polymodal.export.runtime import onnx_session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 99 if stamp == "opset" else 17)])
    model.ir_version = 99 if stamp == "ir" else 8
    save(model, tmp_path / "text.fp32.onnx")
    (tmp_path / "report.json").write_text(json.dumps({"made_with": {"onnxruntime": "99.0.0"}}))
    with pytest.raises(PolymodalError) as e:
        onnx_session(tmp_path / "text.fp32.onnx")
    assert "damaged" not in str(e.value) and said in str(e.value) and "pip install -U onnxruntime" in str(e.value)
    assert "(it was exported with onnxruntime 99.0.0)" in str(e.value)
