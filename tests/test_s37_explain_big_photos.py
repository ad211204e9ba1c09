"""Heat maps of 48-200 MP phone photos: drawn over the photo decoded at reduced scale (a 200 MP JPEG is past
Pillow's pixel limit at full size), so `vqa --explain` and `search --explain` take what `vqa` and `search` take."""

import json

import numpy as np
import pytest
from PIL import Image

from polymodal.apps.explain import OVERLAY_MIN_SIDE, occlusion_heat, save_heatmap
from polymodal.data.images import ImageTransform
from test_explain_retrieval import TopLeftModel


def _jpeg(path, size):
    Image.new("L", size, 128).save(path, "JPEG", quality=50)
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 200 MP phone photo (16320x12240), written once for the module's two tests (neither changes it)."""
    return _jpeg(tmp_path_factory.mktemp("s37-big") / "phone.jpg", (16320, 12240))


def test_vqa_explain_on_a_200_megapixel_photo_answers_and_draws_its_heat_map(big, easy_vqa, tmp_path, capsys,
                                                                             monkeypatch):
    import polymodal.cli_vqa as cli_vqa
    from polymodal import cli

    monkeypatch.setattr(cli_vqa, "_load_vqa_model", lambda *a: easy_vqa)
    heat = tmp_path / "heat.png"
    assert cli.main(["vqa", str(big), "what color is the shape?", "--explain", str(heat), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["explain"] == str(heat)
    width, height = Image.open(heat).size  # 1/4 scale: the first with both sides past OVERLAY_MIN_SIDE
    assert width == 4080 and 3060 < height < 3060 * 1.2  # and the strip below it
    assert min(Image.open(heat).size) >= OVERLAY_MIN_SIDE


class DraftingTopLeftModel(TopLeftModel):
    transform = ImageTransform(resize=56, crop=56, crop_box=True)  # drafts JPEGs, as the lite towers do


def test_a_search_heat_map_of_a_200_megapixel_top_match(big, tmp_path):
    model = DraftingTopLeftModel()
    heat = occlusion_heat(model, str(big), np.array([1.0, 1.0]) / np.sqrt(2))
    out = save_heatmap(str(big), heat, tmp_path / "why.jpg", transform=model.transform, legend=False)
    assert Image.open(out).size == (4080, 3060)


def test_photos_up_to_4096_pixels_on_their_short_side_keep_their_size_in_the_heat_map(tmp_path):
    heat = np.eye(7, dtype=np.float32)
    for size in [(4032, 3024), (640, 480)]:  # a 12 MP phone photo; a small one
        photo = _jpeg(tmp_path / f"{size[0]}.jpg", size)
        assert Image.open(save_heatmap(str(photo), heat, tmp_path / "h.png", transform=None, legend=False)).size == size
    photo = _jpeg(tmp_path / "48mp.jpg", (8000, 6000))  # 48 MP: half size, both sides still past 2048
    assert Image.open(save_heatmap(photo.read_bytes(), heat, tmp_path / "h.png", transform=None,
                                   legend=False)).size == (4000, 3000)


def test_a_panorama_past_pillows_limit_is_drawn_at_the_largest_draft_that_fits(tmp_path):
    pano = _jpeg(tmp_path / "pano.jpg", (48000, 4000))  # 192 MP; at 1/2 its short side (2000) is under 2048
    heat = np.eye(7, dtype=np.float32)
    out = save_heatmap(str(pano), heat, tmp_path / "h.png", transform=DraftingTopLeftModel.transform, legend=False)
    assert Image.open(out).size == (24000, 2000)  # 1/2 (stop 37 drew it at 1/8)
