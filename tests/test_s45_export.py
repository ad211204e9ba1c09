"""Review s45 of deploying exports: a hand-edited or mismatched onnx_config.json (its "dim", its transform's
resample or mean) is the one damaged-export error when the export loads, not a numpy or KeyError traceback on the
first photo or the second text."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

import polymodal  # noqa: E402
from polymodal import cli  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402


def _tiny_export(folder):
    """An export folder of two one-node graphs (1-d vectors) and a word-level tokenizer: loads in milliseconds."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir()
    image = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels"], ["m"], axes=[1, 2, 3], keepdims=1),
         helper.make_node("Flatten", ["m"], ["embedding"])], "image",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 1])])
    text = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["embedding"], axes=[1], keepdims=1)], "text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 1])])
    for name, graph in (("image.fp32.onnx", image), ("text.fp32.onnx", text)):
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / name)
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "cat": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    config = {"type": "onnx_embedding", "name": "tiny", "version": "1", "dim": 1, "logit_scale": 1.0,
              "transform": {"resize": 8, "crop": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                            "resample": "bicubic", "crop_box": False},
              "image": {"file": "image.fp32.onnx", "variant": "fp32"},
              "text": {"file": "text.fp32.onnx", "variant": "fp32", "tokenizer": "tokenizer.json",
                       "max_length": 16, "pad_id": 0, "pad_token": "[PAD]"}}
    (folder / "onnx_config.json").write_text(json.dumps(config))
    return folder, config


def test_the_tiny_export_loads_and_embeds(tmp_path):
    folder, _ = _tiny_export(tmp_path / "exp")
    model = polymodal.load(folder)
    assert model.encode_text(["cat", "a cat"]).shape == (2, 1)


@pytest.mark.parametrize("edit, says", [
    ({"dim": 384}, "says dim 384, but image.fp32.onnx gives 1-d vectors"),
    ({"transform": {"resample": "bicubik"}}, "resample 'bicubik'"),
    ({"transform": {"mean": [0.5, 0.5]}}, "mean needs 3 values"),
])
def test_an_edited_config_is_one_damaged_export_error_at_load(tmp_path, edit, says):
    folder, config = _tiny_export(tmp_path / "exp")
    for key, value in edit.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (folder / "onnx_config.json").write_text(json.dumps(config))
    with pytest.raises(PolymodalError, match="incomplete or damaged export") as err:
        polymodal.load(folder)
    assert says in str(err.value)


def test_cli_classify_with_a_config_of_another_dim_exits_2_without_a_traceback(tmp_path, gallery, capsys):
    folder, config = _tiny_export(tmp_path / "exp")
    (folder / "onnx_config.json").write_text(json.dumps({**config, "dim": 384}))
    photo = sorted(gallery.glob("*.jpg"))[0]
    assert cli.main(["classify", str(photo), "--labels", "dog,cat", "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "damaged export" in err and "Traceback" not in err
