"""What a review of CLIP checkpoint loading found (s41): config.json values that change the embeddings without
changing the weights' shapes (activation, head counts, LayerNorm epsilon) are part of an HF folder's version, and an
open_clip_config.json whose towers pool, mask or activate otherwise than CLIP's is refused instead of ignored."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import save_file
from transformers import CLIPModel

from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.models.clip import fingerprint, load_clip
from polymodal.models.openai_convert import hf_to_openai
from test_clip_checkpoints import TEXTS, _images, make_tiny_clip


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("s41") / "clip")


def _edited_copy(hf_folder, tmp_path, **edit):
    """The folder copied under the same name (so the same model name) with config.json values edited in both towers,
    as a user fixing a wrong hidden_act in place would have it."""
    folder = tmp_path / "copy" / hf_folder.name
    shutil.copytree(hf_folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    for tower in ("vision_config", "text_config"):
        cfg[tower].update(edit)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_a_plain_clip_config_keeps_the_version_it_had(hf_folder, tmp_path):
    """QuickGELU, width // 64 heads, epsilon 1e-5 (OpenAI's folders): the weights' and processor's fingerprint
    alone, as before config.json counted, so indexes built with such a folder stay valid."""
    model = load_clip(_edited_copy(hf_folder, tmp_path))
    assert model.version == fingerprint([hf_folder / "model.safetensors", hf_folder / "preprocessor_config.json"])


@pytest.mark.parametrize("edit", [{"hidden_act": "gelu"}, {"num_attention_heads": 2}, {"layer_norm_eps": 1e-6}])
def test_config_json_values_that_change_the_embeddings_change_the_version(hf_folder, tmp_path, edit):
    before, after = load_clip(hf_folder), load_clip(_edited_copy(hf_folder, tmp_path, **edit))
    assert before.name == after.name  # same folder name: only the version can tell the two spaces apart
    assert not np.allclose(before.encode_image(_images()), after.encode_image(_images()), atol=1e-6)
    assert after.key != before.key and after.version.startswith(before.version + "-")


def test_an_index_built_before_editing_config_json_refuses_the_edited_model(hf_folder, tmp_path):
    from polymodal.index import ImageIndex
    from polymodal.index.store import IndexModelMismatch

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(_images()):
        image.save(photos / f"{i}.png")
    index = ImageIndex(tmp_path / "pics.idx")
    index.update(photos, load_clip(hf_folder), progress=False)
    with pytest.raises(IndexModelMismatch):
        index.search_text(load_clip(_edited_copy(hf_folder, tmp_path, hidden_act="gelu")), "a cat")


def _open_clip_folder(hf_folder, tmp_path, vision=None, text=None):
    folder = tmp_path / "oc"
    folder.mkdir()
    model = CLIPModel.from_pretrained(hf_folder, local_files_only=True)
    save_file(hf_to_openai(model.state_dict()), str(folder / "open_clip_model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (hf_folder / name).is_file():
            shutil.copy(hf_folder / name, folder / name)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "quick_gelu": True, "vision_cfg": {"width": 64, **(vision or {})}, "text_cfg": {"heads": 1, **(text or {})}}}))
    return folder


@pytest.mark.parametrize("vision, text, named", [
    ({"global_average_pool": True}, None, "vision_cfg.global_average_pool = true"),  # CLIPA-style GAP
    ({"pool_type": "avg"}, None, 'vision_cfg.pool_type = "avg"'),
    (None, {"pool_type": "last"}, 'text_cfg.pool_type = "last"'),
    (None, {"no_causal_mask": True}, "text_cfg.no_causal_mask = true"),
    ({"act_kwargs": {"approximate": "tanh"}}, None, "vision_cfg.act_kwargs"),
])
def test_open_clip_tower_settings_clip_cannot_compute_are_refused(hf_folder, tmp_path, vision, text, named):
    folder = _open_clip_folder(hf_folder, tmp_path, vision, text)
    with pytest.raises(PolymodalError, match=named.replace(".", r"\.")):
        load_clip(folder)


def test_open_clip_tower_settings_clip_computes_load(hf_folder, tmp_path):
    """Written-out defaults (and text pooled at the tokenizer's eos, which is where CLIPModel pools) still load."""
    folder = _open_clip_folder(hf_folder, tmp_path, {"pool_type": "tok", "global_average_pool": False},
                               {"pool_type": "eos", "no_causal_mask": False})
    np.testing.assert_allclose(load_clip(folder).encode_text(TEXTS), load_clip(hf_folder).encode_text(TEXTS),
                               atol=1e-5)


def test_the_cli_says_so_in_one_line(hf_folder, tmp_path, capsys):
    folder = _open_clip_folder(hf_folder, tmp_path, {"global_average_pool": True})
    image = tmp_path / "a.png"
    _images()[0].save(image)
    capsys.readouterr()  # (building the folder drew transformers' load bar)
    code = cli.main(["classify", "--model", str(folder / "open_clip_model.safetensors"), str(image),
                     "--labels", "cat,dog"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "global_average_pool" in err
    assert len(err.strip().splitlines()) == 1
