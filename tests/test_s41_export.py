"""Review s41 of `polymodal export onnx` and running exports: an export folder of a kind this polymodal does not
know (one a newer polymodal wrote) is refused with one line that says so, never run as an embedding export nor
called damaged."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

import polymodal  # noqa: E402
from polymodal import cli  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from test_export_audit import export_tiny_clip

    return export_tiny_clip(tmp_path_factory.mktemp("s41"))[1]


def _with_config(src, dst, edit):
    shutil.copytree(src, dst)
    config = json.loads((dst / "onnx_config.json").read_text())
    edit(config)
    (dst / "onnx_config.json").write_text(json.dumps(config))
    return dst


def test_an_export_of_an_unknown_kind_is_refused_not_run_as_an_embedding_export(tiny_export, tmp_path, capsys):
    assert polymodal.load(tiny_export).dim > 0  # the export itself loads
    # a newer polymodal's kind that keeps the embedding keys: it ran as an embedding export, silently
    newer = _with_config(tiny_export, tmp_path / "newer", lambda c: c.update(type="onnx_speech"))
    with pytest.raises(PolymodalError, match=r"of a kind this polymodal .* does not know \('onnx_speech'; made by a "
                                             r"newer polymodal\?\): upgrade polymodal, or export the model again"):
        polymodal.load(newer)
    image = str(tmp_path / "red.png")
    Image.new("RGB", (40, 30), (200, 20, 20)).save(image)
    assert cli.main(["classify", image, "--labels", "cat,dog", "--model", str(newer)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "made by a newer polymodal?" in err and "Traceback" not in err
    # one without the embedding keys was called "incomplete or damaged" (it is neither)
    other = tmp_path / "other"
    other.mkdir()
    (other / "onnx_config.json").write_text(json.dumps({"type": "onnx_detector", "name": "x", "version": "1"}))
    with pytest.raises(PolymodalError, match="does not know") as info:
        polymodal.load(other)
    assert "damaged" not in str(info.value)
    # an export config without a type (every export polymodal wrote has one) is a damaged export
    untyped = _with_config(tiny_export, tmp_path / "untyped", lambda c: c.pop("type"))
    with pytest.raises(PolymodalError, match=r"incomplete or damaged export \(onnx_config.json names no type\)"):
        polymodal.load(untyped)
