"""A CLIP folder's image-processor settings where transformers 5 saves them: nested under "image_processor" in
processor_config.json, with no preprocessor_config.json. polymodal read only preprocessor_config.json and fell back to
OpenAI's mean/std with an info line, so its image embeddings differed from CLIPProcessor + get_image_features."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from test_clip_checkpoints import _write_tokenizer_files, make_tiny_clip
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

try:  # transformers 5.4+ names the PIL processor apart (its CLIPImageProcessor is the torchvision one)
    from transformers import CLIPImageProcessorPil
except ImportError:  # 4.56-5.3: CLIPImageProcessor is the PIL one
    from transformers import CLIPImageProcessor as CLIPImageProcessorPil

import polymodal
from polymodal.models.clip import OPENAI_CLIP_TRANSFORM, transform_from_preprocessor
from polymodal.models.openai_convert import hf_to_openai

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _images():
    rng = np.random.default_rng(3)
    # short side resizes exactly to 40 (then a 32 crop), so PIL and the processor agree pixel for pixel
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((64, 96), (50, 40), (80, 80))]


@pytest.fixture(scope="module")
def custom_folder(tmp_path_factory):
    """The tiny CLIP, its processor saved by CLIPProcessor.save_pretrained: mean/std 0.5, resize 40 != crop 32."""
    folder = make_tiny_clip(tmp_path_factory.mktemp("custom") / "clip")
    (folder / "preprocessor_config.json").unlink()
    ip = CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, resample=2,
                               image_mean=list(MEAN), image_std=list(STD))
    CLIPProcessor(image_processor=ip, tokenizer=CLIPTokenizer.from_pretrained(folder)).save_pretrained(folder)
    return folder


def test_clip_processor_folder_matches_transformers(custom_folder):
    """transformers 5 writes processor_config.json only (4.x: preprocessor_config.json); either way polymodal uses the
    saved settings and its image embeddings are CLIPProcessor + get_image_features'."""
    model = polymodal.load(custom_folder)
    t = model.transform
    assert (t.resize, t.crop, t.resample, t.mean, t.std) == (40, 32, "bilinear", MEAN, STD)
    ref = CLIPModel.from_pretrained(custom_folder, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(custom_folder, local_files_only=True)
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=proc(images=_images(), return_tensors="pt")["pixel_values"])
    want = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()
    got = model.encode_image(_images())
    cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cos.min() > 0.9999, cos


def test_nested_image_processor_settings_are_read_first(tmp_path):
    """transformers 5's layout written by hand (any installed version), beside a stale preprocessor_config.json:
    transformers 5 reads the nested settings first, so polymodal does too."""
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor", "image_processor": {
        "size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "resample": 0,
        "image_mean": list(MEAN), "image_std": list(STD)}}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 224}}))
    t = transform_from_preprocessor(tmp_path)
    assert (t.resize, t.crop, t.resample, t.mean, t.std) == (40, 32, "nearest", MEAN, STD)


def test_a_processor_config_without_image_settings_falls_to_preprocessor_config(tmp_path):
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 40}, "image_std": STD}))
    t = transform_from_preprocessor(tmp_path)
    assert (t.resize, t.std, t.mean) == (40, STD, OPENAI_CLIP_TRANSFORM.mean)


def test_unreadable_processor_config_is_an_error(tmp_path):
    (tmp_path / "processor_config.json").write_text("{not json")
    with pytest.raises(polymodal.PolymodalError, match="unreadable .*processor_config.json"):
        transform_from_preprocessor(tmp_path)


def test_hf_folder_without_processor_settings_warns(tmp_path, caplog):
    folder = make_tiny_clip(tmp_path / "clip")
    (folder / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.INFO, logger="polymodal.models.clip"):
        model = polymodal.load(folder)
    assert model.transform.mean == OPENAI_CLIP_TRANSFORM.mean  # still the fallback, cropped to the tower's 32
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "image processor settings" in r.message]
    assert len(warned) == 1, caplog.text
    assert "using OpenAI CLIP's" in warned[0].message and "save its image processor beside it" in warned[0].message


def test_openai_layout_file_without_processor_settings_only_informs(tmp_path, caplog):
    """An OpenAI-layout file never comes with processor settings, and OpenAI's are its own: no warning each load."""
    folder = make_tiny_clip(tmp_path / "hf")
    sd = hf_to_openai(CLIPModel.from_pretrained(folder, local_files_only=True).state_dict())
    _write_tokenizer_files(tmp_path / "oa")
    torch.save(sd, tmp_path / "oa" / "w.pt")
    with caplog.at_level(logging.INFO, logger="polymodal.models.clip"):
        polymodal.load(tmp_path / "oa" / "w.pt")
    records = [r for r in caplog.records if "image processor settings" in r.message]
    assert [r.levelno for r in records] == [logging.INFO], caplog.text


def test_changed_preprocessing_is_another_model_version(tmp_path):
    """An index or feature cache built with one preprocessing must not take embeddings made with another."""
    folder = make_tiny_clip(tmp_path / "clip")
    before = polymodal.load(str(folder)).version
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    cfg["image_mean"] = [0.5, 0.5, 0.5]
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert polymodal.load(str(folder)).version != before
