"""Stop 54, explaincrop: from Python, `save_heatmap(image, heat, out)` without ``transform=`` drew the map over the
whole photo, not the centre crop the model saw: on a 1600x400 photo easy-vqa's top-left cell landed at x=0..212
instead of x=600..652, with no error. A bare grid cannot say which crop it covers, so leaving it out is refused."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from docs_text import docs_text
from PIL import Image

from polymodal.apps.explain import occlusion_heat, save_heatmap
from polymodal.data.images import ImageTransform
from polymodal.errors import PolymodalError


class LeftHalfModel:
    """Embeds an image by the brightness of the left half of its crop: only that half can matter."""

    transform = ImageTransform(resize=56, crop=56)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        a = pixels[:, :, :, :28].mean(axis=(1, 2, 3))
        e = np.stack([a, np.ones_like(a)], 1)
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def _wide_photo(path: Path) -> Path:
    arr = np.full((224, 672, 3), 128, np.uint8)  # the model sees x=224..447 (shrunk to 56x56)
    arr[:, 224:336] = 255
    Image.fromarray(arr).save(path)
    return path


def _mapped_columns(photo: Path, out: Path) -> tuple[int, int]:
    picture = Image.open(out).crop((0, 0, *Image.open(photo).size))  # the strip below it aside
    changed = np.abs(np.asarray(picture, np.int16) - np.asarray(Image.open(photo), np.int16)).sum(-1)
    cols = np.where(changed.any(0))[0]
    return int(cols.min()), int(cols.max())


def test_save_heatmap_without_transform_refuses_rather_than_miss_the_crop(tmp_path):
    photo = _wide_photo(tmp_path / "photo.png")
    heat = np.eye(7, dtype=np.float32)
    with pytest.raises(PolymodalError, match=r"needs transform=: pass model.transform") as err:
        save_heatmap(photo, heat, tmp_path / "h.png")
    assert "\n" not in str(err.value) and not (tmp_path / "h.png").exists()
    # said out loud, either placement is drawn where it was asked for
    assert _mapped_columns(photo, save_heatmap(photo, heat, tmp_path / "a.png", transform=None)) == (0, 671)
    assert _mapped_columns(photo, save_heatmap(photo, heat, tmp_path / "b.png", transform=LeftHalfModel.transform)) \
        == (224, 447)


def test_readmes_python_route_runs_as_written(tmp_path, monkeypatch):
    text = " ".join(docs_text().split())
    call = re.search(r"`(save_heatmap\(\"photo\.jpg\", heat, \"why\.png\", transform=model\.transform\))`", text)
    assert call and "leaving `transform=` out is an error" in text
    monkeypatch.chdir(tmp_path)
    photo = _wide_photo(tmp_path / "photo.jpg")
    model = LeftHalfModel()
    heat = occlusion_heat(model, "photo.jpg", np.array([1, 1]) / np.sqrt(2))
    scope = {"save_heatmap": save_heatmap, "heat": heat, "model": model}
    assert _mapped_columns(photo, eval(call.group(1), scope)) == (224, 447)  # the crop the model saw
    with pytest.raises(PolymodalError, match="transform="):
        eval(call.group(1).replace(", transform=model.transform", ""), scope)
