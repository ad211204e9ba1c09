"""`pip install 'polymodal[onnx]'` then `polymodal export onnx lite` (README's command) must work: without
--val-pairs the export checks itself on the built-in sample photos, which need scikit-image, so the onnx extra
brings it; where it is missing anyway, the one-line error names the onnx extra and --val-pairs."""

import re
import sys
from pathlib import Path

import pytest

from polymodal.errors import PolymodalError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _extra(name: str) -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    return [re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower() for req in extras[name]]


def test_the_onnx_extra_brings_what_export_without_val_pairs_needs():
    assert "scikit-image" in _extra("onnx")


def test_export_without_scikit_image_names_the_onnx_extra_and_val_pairs(monkeypatch):
    from polymodal.export.onnx_export import validation_set

    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage -> ImportError
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(PolymodalError) as err:
        validation_set(None)
    message = str(err.value)
    assert "polymodal[onnx]" in message and "--val-pairs" in message, message
