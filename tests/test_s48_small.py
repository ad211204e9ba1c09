"""Small mendings of stop 48, each from an earlier stop's list of what was left alone."""

import json

from polymodal.cli import main
from test_s42_captrain import _pairs


def test_a_captioner_resume_names_its_config_only_settings_as_config_keys(tmp_path, capsys):
    """`train captioner` has no --dropout (`train vqa` has): a resume that changed it names the --config key."""
    run = str(tmp_path / "run")
    (tmp_path / "a.json").write_text(json.dumps({"arch": {"dropout": 0.1}}))
    (tmp_path / "b.json").write_text(json.dumps({"arch": {"dropout": 0.3}}))
    assert main(["train", "captioner", "--pairs", _pairs(tmp_path), "--out", run, "--epochs", "1", "--batch-size", "4",
                 "--config", str(tmp_path / "a.json"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "captioner", "--out", run, "--resume", "--epochs", "2", "--config", str(tmp_path / "b.json"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert '"dropout": 0.1 (a --config key; asked now: 0.3)' in err, err
    assert "--dropout" not in err, err


def test_a_small_photos_heat_map_is_enlarged_to_be_seen(tmp_path):
    import numpy as np
    from PIL import Image

    from polymodal.apps.explain import VIEW_MIN_SIDE, save_heatmap

    heat = np.zeros((7, 7), np.float32)
    heat[0, 0] = 1  # the top-left cell
    photo = Image.new("RGB", (64, 48), "gray")  # easy-VQA's are 64x64: the map was 64x64, 9 pixels a cell
    out = np.asarray(Image.open(save_heatmap(photo, heat, tmp_path / "h.png", transform=None, legend=False)), np.int16)
    assert out.shape == (240, 320, 3) and VIEW_MIN_SIDE == 224  # 5 times: each pixel a 5x5 block
    hot, cold = out[:20, :20].mean((0, 1)), out[-20:, -20:].mean((0, 1))
    assert np.abs(hot - cold).max() > 40  # the hot cell still sits over the photo's top left


def test_a_thin_strips_heat_map_is_not_enlarged_past_a_readable_size(tmp_path):
    import numpy as np
    from PIL import Image

    from polymodal.apps.explain import OVERLAY_MIN_SIDE, save_heatmap

    heat = np.eye(7, dtype=np.float32)
    strip = Image.new("RGB", (3000, 2), "gray")  # enlarged 112 times it was a 336000x224 PNG (34 s, 7 GB)
    assert Image.open(save_heatmap(strip, heat, tmp_path / "h.png", transform=None, legend=False)).size == (3000, 2)
    small = Image.new("RGB", (500, 20), "gray")  # 4 times: the long side stays within OVERLAY_MIN_SIDE
    assert Image.open(save_heatmap(small, heat, tmp_path / "s.png", transform=None, legend=False)).size == (2000, 80)
    assert 2000 <= OVERLAY_MIN_SIDE
