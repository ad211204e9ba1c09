"""A polymodal model folder without its config.json (copied in part) is said as such, not as a CLIP checkpoint
that lacks visual.conv1.weight."""

import shutil

import pytest
from PIL import Image

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.resources import HERE


@pytest.mark.parametrize("name", ["default", "easy-vqa", "captioner", "coco-yesno"])
def test_a_model_folder_without_config_json_is_called_incomplete(name, tmp_path, capsys):
    folder = tmp_path / f"{name}-copy"
    shutil.copytree(HERE / "models" / name, folder)
    (folder / "config.json").unlink()
    with pytest.raises(PolymodalError, match="holds a polymodal model's weights but no config.json: the folder is "
                                             "incomplete"):
        polymodal.load(folder)
    photo = tmp_path / "photo.png"  # a real photo: a command checks its photos before it loads a model
    Image.new("RGB", (8, 8)).save(photo)
    assert cli.main(["classify", str(photo), "--labels", "a,b", "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "no config.json" in err and "visual.conv1" not in err


def test_other_weights_without_config_json_still_get_the_checkpoint_message(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    (tmp_path / "w").mkdir()
    save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "w" / "model.safetensors"))
    with pytest.raises(PolymodalError, match="visual.conv1.weight"):
        polymodal.load(tmp_path / "w")


@pytest.mark.parametrize("name", ["default", "easy-vqa", "captioner"])
def test_a_config_key_this_polymodal_does_not_know_suggests_a_newer_polymodal(name, tmp_path):
    import json

    folder = tmp_path / name
    shutil.copytree(HERE / "models" / name, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "speech_head": True}))
    with pytest.raises(PolymodalError, match=r"config keys \['speech_head'\].*saved by a newer polymodal\? this is "):
        polymodal.load(folder)
