"""Why a retrieval match matched: occlusion heat maps for any embedding model, drawn over the crop the model saw,
saved in the format the file name asks for, and `polymodal search --explain`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import cli_json
from polymodal.apps.explain import occlusion_heat, overlay_heatmap, save_heatmap
from polymodal.data.images import ImageTransform
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex


class TopLeftModel:
    """Embeds an image by the brightness of its crop's top-left quadrant: only that quadrant can matter."""

    transform = ImageTransform(resize=56, crop=56)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        a = pixels[:, :, :28, :28].mean(axis=(1, 2, 3))
        e = np.stack([a, np.ones_like(a)], 1)
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def test_occlusion_heat_lights_exactly_the_region_the_embedding_uses():
    arr = np.zeros((56, 56, 3), np.uint8)
    arr[:28, :28] = 255
    query = np.array([1, 1]) / np.sqrt(2)
    heat = occlusion_heat(TopLeftModel(), Image.fromarray(arr), query, grid=7, window=1)
    assert heat.shape == (7, 7) and (heat >= 0).all()
    assert (heat[:3, :3] > 0).all()  # cells inside the quadrant: blanking them lowers the match
    assert np.allclose(heat[4:], 0) and np.allclose(heat[:, 4:], 0)  # cells outside it change nothing
    blocks = occlusion_heat(TopLeftModel(), Image.fromarray(arr), query, grid=7)  # 2x2 blocks: one cell further
    assert (blocks[:3, :3] > 0).all() and np.allclose(blocks[5:], 0) and np.allclose(blocks[:, 5:], 0)
    assert blocks[0, 0] > blocks[4, 4]


def test_the_heat_covers_the_centre_crop_of_a_wide_image(tmp_path):
    transform = ImageTransform(resize=224, crop=224)
    assert transform.source_box((448, 224)) == pytest.approx((112, 0, 336, 224), abs=1)
    img = Image.new("RGB", (448, 224), "gray")
    heat = np.zeros((7, 7), np.float32)
    heat[3, 3] = 1
    out = np.asarray(overlay_heatmap(img, heat, box=transform.source_box(img.size)), dtype=np.int16)
    assert (out[:, :112] == 128).all() and (out[:, 337:] == 128).all()  # outside the crop: untouched
    assert np.abs(out[:, 112:336] - 128).max() > 20  # inside: coloured
    jpg = save_heatmap(img, heat, tmp_path / "h.jpg", transform=transform, legend=False)
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff" and Image.open(jpg).size == (448, 224)  # a real JPEG
    with pytest.raises(PolymodalError, match="end the file name in .png"):
        save_heatmap(img, heat, tmp_path / "h.txt")


def test_cli_search_explain_writes_a_heat_map_of_the_top_match(lite, gallery, tmp_path):
    db = tmp_path / "db"
    ImageIndex(db).update(gallery, lite, progress=False)
    out = tmp_path / "why.png"
    result = cli_json(["search", "a cup of coffee", "--db", str(db), "-k", "2", "--explain", str(out), "--json"])
    top = result[0]["path"]
    assert result[0]["explain"] == str(out) and "explain" not in result[1]  # on the row it explains
    picture = Image.open(out).crop((0, 0, *Image.open(top).size))  # the strip below it aside
    assert Image.open(out).width == Image.open(top).width
    assert np.abs(np.asarray(picture, np.int16) - np.asarray(Image.open(top).convert("RGB"), np.int16)).max() > 0
    plain = cli_json(["search", "a cup of coffee", "--db", str(db), "-k", "2", "--json"])
    assert [h["path"] for h in plain] == [h["path"] for h in result]  # same list, same ranking with or without


class MeanBrightnessModel:
    """Embeds an image by the mean of its whole crop: every block of the same area matters equally."""

    transform = ImageTransform(resize=56, crop=56)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        a = pixels.mean(axis=(1, 2, 3))
        e = np.stack([a, np.ones_like(a)], 1)
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def test_occlusion_heat_is_the_mean_drop_of_window_sized_blocks():
    # grid 3, window 2: four 2x2-cell blocks of equal area (37x37 px), each dropping the cosine by the same d. Every
    # cell is the MEAN over the blocks covering it (a sum would make the centre 4d), and each block blanks all of its
    # window x window cells (blanking one cell would give unequal drops)
    model, image, query = MeanBrightnessModel(), Image.new("RGB", (56, 56), "white"), np.array([1, 1]) / np.sqrt(2)
    pixels = model.transform([image])
    blanked = pixels.copy()
    blanked[:, :, :37, :37] = 0
    d = float(model.embed_pixels(pixels)[0] @ query - model.embed_pixels(blanked)[0] @ query)
    heat = occlusion_heat(model, image, query, grid=3, window=2)
    assert d > 0.01
    np.testing.assert_allclose(heat, np.full((3, 3), d), rtol=1e-5)


def test_save_heatmap_with_transform_leaves_the_uncropped_sides_alone(tmp_path):
    # the grid covers only the centre crop the model saw: a PNG (lossless) keeps the sides' original pixels
    img = Image.new("RGB", (448, 224), "gray")
    heat = np.zeros((7, 7), np.float32)
    heat[3, 3] = 1
    out = np.asarray(Image.open(save_heatmap(img, heat, tmp_path / "h.png", transform=ImageTransform(224, 224),
                                             legend=False)), np.int16)
    assert (out[:, :112] == 128).all() and (out[:, 337:] == 128).all()
    assert np.abs(out[:, 112:336] - 128).max() > 20
