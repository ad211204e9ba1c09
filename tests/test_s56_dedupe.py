"""Stop 56, dedupe: the helpers that now serve code written out two to four times keep every copy's behaviour."""

import argparse

import numpy as np
import pytest

from polymodal.errors import PolymodalError


# -- models/folders.py: config_from_dict (the three Config.from_dict) -----------------------------------------------
def test_config_from_dict_passes_over_folder_keys_and_names_the_model_in_its_refusal():
    from polymodal.models.captioner import CaptionerConfig
    from polymodal.models.dual_encoder import DualEncoderConfig
    from polymodal.models.folders import config_from_dict
    from polymodal.models.fusion_encoder import FusionEncoderConfig

    config = config_from_dict(CaptionerConfig, {"type": "captioner", "version": "abc", "transform": {}, "lora_rank": 8},
                              "captioner")
    assert config == CaptionerConfig(lora_rank=8)
    for cls, what in ((CaptionerConfig, "captioner"), (DualEncoderConfig, "dual-encoder"),
                      (FusionEncoderConfig, "fusion-encoder")):
        with pytest.raises(PolymodalError) as err:
            cls.from_dict({"bogus": 1, "zz": 2, "type": "x"})
        # settings_from reads the "unknown " start as a newer polymodal's key
        assert str(err.value).startswith(f"unknown {what} config keys ['bogus', 'zz']; known: [")


# -- encoders/efficientnet.py: grid_transform (the fusion encoder's and the captioner's, one grid cache) -------------
def test_the_grid_models_transform_is_the_towers_normalisation_with_resize_equal_to_crop():
    from polymodal.encoders.efficientnet import grid_transform
    from polymodal.models.captioner import CaptionerConfig
    from polymodal.models.fusion_encoder import FusionEncoderConfig

    assert grid_transform(64).to_dict() == {"resize": 64, "crop": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                            "resample": "bicubic", "crop_box": True}
    for size in (64, 224):
        assert CaptionerConfig(image_size=size).transform == FusionEncoderConfig(image_size=size).transform
        assert FusionEncoderConfig(image_size=size).transform == grid_transform(size)


# -- models/folders.py: read_weights (load_trained_weights, load_yesno) ----------------------------------------------
@pytest.mark.parametrize("content", [None, b"not a safetensors file"])
def test_read_weights_says_the_folder_is_incomplete_for_a_missing_or_broken_file(tmp_path, content):
    from safetensors.numpy import load_file

    from polymodal.models.folders import WEIGHTS_FILE, read_weights

    if content is not None:
        (tmp_path / WEIGHTS_FILE).write_bytes(content)
    with pytest.raises(PolymodalError, match=r"^cannot read .*model\.safetensors \(.+\); the model folder is "
                                             r"incomplete$"):
        read_weights(tmp_path, load_file)


def test_read_weights_reads_with_the_loader_it_is_given(tmp_path):
    from safetensors.numpy import load_file, save_file

    from polymodal.models.folders import WEIGHTS_FILE, read_weights

    save_file({"w": np.arange(3, dtype=np.float32)}, str(tmp_path / WEIGHTS_FILE))
    state = read_weights(tmp_path, load_file)
    assert list(state) == ["w"] and state["w"].tolist() == [0.0, 1.0, 2.0]


# -- cli_options.py: add_eval_options (eval retrieval, zeroshot, images, vqa) ----------------------------------------
def test_add_eval_options_adds_the_eval_tail_in_order_with_each_commands_notes():
    from polymodal.cli_options import add_eval_options

    parser = argparse.ArgumentParser()
    add_eval_options(parser, " (LIMIT NOTE)", "RUNTIME HELP", "; PRECISION NOTE")
    flags = [a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest != "help"]
    assert flags == ["--limit", "--runtime", "--precision", "--quiet", "--out", "--page", "--split", "--strict", "--ci"]
    helps = {a.option_strings[-1]: a.help for a in parser._actions}
    assert helps["--limit"] == "evaluate only the first N photos (LIMIT NOTE)"
    assert helps["--runtime"].startswith("RUNTIME HELP (default auto")
    assert "PRECISION NOTE" in helps["--precision"]
    assert helps["--ci"] != argparse.SUPPRESS  # these commands score items one by one: --ci is offered
    args = parser.parse_args([])
    assert (args.limit, args.runtime, args.precision, args.quiet, args.ci) == (None, "auto", "fp32", False, False)


# -- cli_options.py: the training flags the three fusion/captioner trainers share ------------------------------------
def test_shared_train_flags_lead_each_trainers_flags_in_the_same_order():
    from polymodal.cli_caption import CAPTION_FLAGS
    from polymodal.cli_pretrain import PRETRAIN_FLAGS
    from polymodal.cli_vqa import VQA_FLAGS

    loop = ["epochs", "lr", "weight_decay", "warmup_steps", "grad_clip", "seed", "patience", "log_every"]
    fusion = ["fusion", "dim", "dropout", "image_size"]
    assert list(CAPTION_FLAGS)[:8] == loop and list(CAPTION_FLAGS)[8] == "prefix_grid"
    for flags in (VQA_FLAGS, PRETRAIN_FLAGS):
        assert list(flags)[:12] == loop + fusion
    assert VQA_FLAGS["lr"] == ("train", float) and PRETRAIN_FLAGS["image_size"] == ("arch", int)


# -- demo.py: one table for both searches ----------------------------------------------------------------------------
def test_demo_hits_table_lists_rank_score_and_file_name():
    from types import SimpleNamespace

    from polymodal.demo import _hits_table

    hits = [SimpleNamespace(path="/x/gallery/cat.jpg", score=0.51234), SimpleNamespace(path="/x/moon.jpg", score=0.2)]
    lines = _hits_table(hits).splitlines()
    assert all(line.startswith("  ") for line in lines)
    assert lines[0].split() == ["rank", "score", "photo"]
    assert [line.split() for line in lines[-2:]] == [["1", "0.512", "cat.jpg"], ["2", "0.200", "moon.jpg"]]
