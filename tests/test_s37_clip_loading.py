"""What a review of checkpoint loading found (stop 37): open_clip's head counts and activation (its
open_clip_config.json, its wide ViTs), a version that tells other settings apart, and one clear error for a
config.json or a state dict that does not describe the weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from polymodal.errors import PolymodalError
from polymodal.models.clip import load_clip, transform_from_preprocessor
from polymodal.models.openai_convert import hf_to_openai, infer_config
from test_clip_checkpoints import CLIPImageProcessorPil, _images, _write_tokenizer_files


def _laion_like(folder, sidecar: bool):
    """An open_clip-layout folder whose true architecture width // 64 and QuickGELU would get wrong: GELU, and a
    vision tower of width 320 in 4 heads of 80 (as ViT-H's 1280 is 16 of 80; 320 // 64 = 5 divides it too)."""
    n = _write_tokenizer_files(folder)
    tok = CLIPTokenizer.from_pretrained(folder)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=n, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=1, max_position_embeddings=16, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, projection_dim=32,
                         hidden_act="gelu"),
        vision_config=dict(hidden_size=320, intermediate_size=1280, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=32, hidden_act="gelu"),
        projection_dim=32)
    torch.manual_seed(0)
    ref = CLIPModel(cfg).eval()
    with torch.no_grad():  # sharp attention and large MLP inputs, as trained weights have: heads and GELU matter
        for name, p in ref.named_parameters():
            p.mul_(8) if any(k in name for k in ("fc1.weight", "q_proj.weight", "k_proj.weight")) else p.add_(
                torch.randn_like(p) * 0.05)
    torch.save(hf_to_openai(ref.state_dict()), folder / "open_clip_pytorch_model.bin")
    if sidecar:
        (folder / "open_clip_config.json").write_text(json.dumps({
            "model_cfg": {"embed_dim": 32,
                          "vision_cfg": {"image_size": 32, "layers": 2, "width": 320, "head_width": 80, "patch_size": 8},
                          "text_cfg": {"context_length": 16, "vocab_size": n, "width": 64, "heads": 1, "layers": 2}},
            "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic"}}))
    return ref


def _image_cosines(model, ref):
    pixels = torch.from_numpy(model.transform(_images()))
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=pixels)
    want = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()
    return (model.encode_image(_images()) * want).sum(1)


def test_open_clip_config_beside_the_weights_gives_heads_activation_and_preprocessing(tmp_path):
    ref = _laion_like(tmp_path, sidecar=True)
    model = load_clip(tmp_path)  # what --model FOLDER does on the command line
    vision = model.model.config.vision_config
    assert (vision.num_attention_heads, vision.hidden_act) == (4, "gelu")
    assert model.transform.mean == (0.5, 0.5, 0.5) and model.transform.std == (0.25, 0.25, 0.25)
    np.testing.assert_allclose(_image_cosines(model, ref), 1.0, atol=1e-5)
    (tmp_path / "open_clip_config.json").unlink()
    guessed = load_clip(tmp_path)  # nothing says: OpenAI's guess, 5 heads and QuickGELU, a different model
    assert guessed.model.config.vision_config.num_attention_heads == 5
    assert _image_cosines(guessed, ref).min() < 0.95
    assert guessed.key != model.key  # an index built with one refuses the other


def _shapes(v_width, t_width, layers=1):
    """The tensors infer_config reads, as empty tensors of a checkpoint's shapes."""
    e = torch.empty
    sd = {"visual.conv1.weight": e(v_width, 3, 14, 14), "visual.positional_embedding": e(257, v_width),
          "visual.proj": e(v_width, 64), "token_embedding.weight": e(49408, t_width),
          "positional_embedding": e(77, t_width), "ln_final.weight": e(t_width), "text_projection": e(t_width, 64)}
    for i in range(layers):
        sd[f"visual.transformer.resblocks.{i}.mlp.c_fc.weight"] = e(4 * v_width, v_width)
        sd[f"transformer.resblocks.{i}.mlp.c_fc.weight"] = e(4 * t_width, t_width)
    return sd


@pytest.mark.parametrize("v_width,t_width,heads,act", [
    (1280, 1024, (16, 16), "gelu"),  # open_clip ViT-H-14: 16 heads of 80, not 1280 // 64 = 20
    (1408, 1024, (16, 16), "gelu"),  # ViT-g-14
    (1664, 1280, (16, 20), "gelu"),  # ViT-bigG-14
    (1024, 768, (16, 12), "quick_gelu"),  # OpenAI's ViT-L-14: width // 64
    (768, 512, (12, 8), "quick_gelu"),  # OpenAI's ViT-B
])
def test_without_a_config_the_known_shapes_get_their_own_heads_and_activation(v_width, t_width, heads, act):
    config = infer_config(_shapes(v_width, t_width))
    assert (config.vision_config.num_attention_heads, config.text_config.num_attention_heads) == heads
    assert config.vision_config.hidden_act == config.text_config.hidden_act == act


def test_a_file_loaded_as_before_keeps_its_version_and_other_settings_get_another(tmp_path):
    from test_clip_checkpoints import make_tiny_clip

    hf = make_tiny_clip(tmp_path / "hf")
    file = tmp_path / "tiny.pt"
    torch.save(hf_to_openai(CLIPModel.from_pretrained(hf).state_dict()), file)
    tok = tmp_path / "bare-tokenizer"
    plain = load_clip(file, tokenizer=tok)
    assert len(plain.version) == 12  # as every polymodal before: indexes built with it stay valid
    gelu = load_clip(file, tokenizer=tok, hidden_act="gelu")
    assert gelu.version.startswith(plain.version + "-") and gelu.key != plain.key


def test_hf_weights_with_layers_config_json_lacks_are_refused(tmp_path):
    from test_clip_checkpoints import make_tiny_clip

    hf = make_tiny_clip(tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["vision_config"]["num_hidden_layers"] = 1  # a config copied from another checkpoint
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PolymodalError, match=r"not in its architecture: vision_model\.encoder\.layers\.1\."):
        load_clip(hf)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["vision_config"].update(num_attention_heads=3), "not a multiple of the number of attention heads"),
    (lambda c: c["vision_config"].update(hidden_act="quick-gelu"), "hidden_act 'quick-gelu' is not an activation"),
    (lambda c: c["vision_config"].update(image_size="32"), "Field 'image_size' with value '32'"),
])
def test_a_config_json_value_transformers_refuses_is_one_error(tmp_path, capsys, edit, message):
    from polymodal import cli
    from test_clip_checkpoints import make_tiny_clip

    hf = make_tiny_clip(tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    edit(cfg)
    (hf / "config.json").write_text(json.dumps(cfg))
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 40), "red").save(photo)
    capsys.readouterr()  # the fixture's save draws a bar
    assert cli.main(["classify", str(photo), "--labels", "cat,dog", "--model", str(hf)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_an_openai_layout_file_without_a_tower_is_refused(tmp_path):
    from test_clip_checkpoints import make_tiny_clip

    hf = make_tiny_clip(tmp_path / "hf")
    sd = hf_to_openai(CLIPModel.from_pretrained(hf).state_dict())
    file = tmp_path / "partial.pt"
    torch.save({k: v for k, v in sd.items() if not k.startswith("transformer.")}, file)
    with pytest.raises(PolymodalError, match=r"no text tower blocks \(transformer\.resblocks"):
        load_clip(file, tokenizer=tmp_path / "bare-tokenizer")


@pytest.mark.parametrize("options,message", [
    ({"hidden_act": "QuickGELU"}, "hidden_act 'QuickGELU' is not an activation"),
    ({"vision_heads": -1}, "vision_heads must be a whole number"),
    ({"vision_heads": 0}, "vision_heads must be a whole number"),
    ({"text_heads": 1.5}, "text_heads must be a whole number"),
])
def test_load_options_are_checked(options, message):
    with pytest.raises(PolymodalError, match=message):
        infer_config(_shapes(768, 512), **options)


@pytest.mark.parametrize("settings", [
    {"do_normalize": False},
    {"rescale_factor": 1 / 127.5},
    {"do_rescale": False, "image_mean": [100, 100, 100], "image_std": [50, 60, 70]},
    {"resample": 1},  # LANCZOS
    {"resample": 4},  # BOX
])
def test_image_processor_switches_give_its_pixels(tmp_path, settings):
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **settings)
    proc.save_pretrained(tmp_path)
    transform = transform_from_preprocessor(tmp_path)
    images = _images()
    np.testing.assert_allclose(transform(images), proc(images=images, return_tensors="np")["pixel_values"], atol=1e-4)


def test_a_trained_model_folder_with_a_value_of_the_wrong_type_is_one_error(tmp_path):
    import polymodal
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    folder = DualEncoder(DualEncoderConfig(embed_dim=64)).save(tmp_path / "model")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["embed_dim"] = "64"  # edited by hand
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PolymodalError, match=r"embed_dim must be an integer, got '64'; fix embed_dim \(in .*config"):
        polymodal.load(folder)


def test_a_config_naming_only_the_activation_keeps_the_head_counts(tmp_path):
    from test_clip_checkpoints import make_tiny_clip

    hf = make_tiny_clip(tmp_path / "hf")
    folder = tmp_path / "laion"
    _write_tokenizer_files(folder)
    torch.save(hf_to_openai(CLIPModel.from_pretrained(hf).state_dict()), folder / "weights.pt")
    (folder / "open_clip_config.json").write_text('{"model_cfg": {"quick_gelu": false}}')
    config = load_clip(folder).model.config
    assert config.vision_config.hidden_act == "gelu"
    assert (config.vision_config.num_attention_heads, config.text_config.num_attention_heads) == (1, 1)  # width // 64


def test_a_processor_setting_now_honoured_gives_a_new_version_and_the_rest_keep_theirs(tmp_path):
    from test_clip_checkpoints import make_tiny_clip

    hf = make_tiny_clip(tmp_path / "hf")
    assert len(load_clip(hf).version) == 12  # read as before: indexes built with it stay valid
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=[0.4] * 3,
                          image_std=[0.2] * 3, resample=1).save_pretrained(hf)  # LANCZOS: read as bicubic before
    changed = load_clip(hf)
    assert changed.transform.resample == "lanczos" and len(changed.version) == 12 + 7  # its old index is refused
    file = tmp_path / "oa" / "tiny.pt"  # an OpenAI-layout file with other (but before-read) settings beside it
    file.parent.mkdir()
    _write_tokenizer_files(file.parent)
    torch.save(hf_to_openai(CLIPModel.from_pretrained(hf).state_dict()), file)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=[0.4] * 3,
                          image_std=[0.2] * 3).save_pretrained(file.parent)
    assert len(load_clip(file).version) == 12


def test_a_wide_vit_without_its_config_is_loaded_as_laions_with_a_warning(tmp_path, caplog):
    import logging

    n = _write_tokenizer_files(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    cfg = CLIPConfig(  # ViT-H's width (1280, 16 heads of 80), one small layer per tower
        text_config=dict(vocab_size=n, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
                         max_position_embeddings=16, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         pad_token_id=tok.pad_token_id, projection_dim=16),
        vision_config=dict(hidden_size=1280, intermediate_size=64, num_hidden_layers=1, num_attention_heads=16,
                           image_size=16, patch_size=8, projection_dim=16), projection_dim=16)
    torch.save(hf_to_openai(CLIPModel(cfg).state_dict()), tmp_path / "vit-h.pt")
    with caplog.at_level(logging.WARNING):
        model = load_clip(tmp_path / "vit-h.pt")
    assert model.model.config.vision_config.hidden_act == "gelu"
    assert "loading it as open_clip's ViT-H with GELU" in caplog.text and "QuickGELU" in caplog.text
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"quick_gelu": true}}')  # a DFN5B-like file
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model = load_clip(tmp_path / "vit-h.pt")
    assert model.model.config.vision_config.hidden_act == "quick_gelu" and "ViT-H" not in caplog.text
    assert model.model.config.vision_config.num_attention_heads == 16  # the shape's, the file naming no width


def test_switches_without_a_mean_change_the_version_too(tmp_path):
    """A processor without image_mean/image_std was read with OpenAI's: do_normalize false changes its pixels."""
    from test_clip_checkpoints import make_tiny_clip

    hf = make_tiny_clip(tmp_path / "hf")
    (hf / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 32},
                                                             "crop_size": {"height": 32, "width": 32}}))
    assert len(load_clip(hf).version) == 12  # read as before
    (hf / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 32}, "do_normalize": False,
                                                             "crop_size": {"height": 32, "width": 32}}))
    assert len(load_clip(hf).version) == 12 + 7  # its pixels are not what they were: a suffix
