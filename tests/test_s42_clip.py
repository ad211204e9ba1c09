"""CLIP loading (s42): an open_clip_config.json text tower given a width but no heads gets open_clip's default of 8
heads (CLIPTextCfg), not OpenAI's width // 64."""

import json

import pytest

from polymodal.models.clip import load_clip
from test_clip_checkpoints import make_tiny_clip
from test_s41_clip import _open_clip_folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("s42") / "clip")


def test_a_text_tower_without_heads_gets_open_clips_default(hf_folder, tmp_path):
    folder = _open_clip_folder(hf_folder, tmp_path)
    path = folder / "open_clip_config.json"
    cfg = json.loads(path.read_text())
    cfg["model_cfg"]["text_cfg"] = {"width": 32}
    path.write_text(json.dumps(cfg))
    assert load_clip(folder).model.config.text_config.num_attention_heads == 8
    cfg["model_cfg"]["text_cfg"] = {}  # no width either: the shape's count, as before
    path.write_text(json.dumps(cfg))
    assert load_clip(folder).model.config.text_config.num_attention_heads == 1
