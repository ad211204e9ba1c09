"""Mistakes a researcher makes from Python (found by s29's API audit): each is one PolymodalError or warning that
says what to do, or is read as the user meant, never a silently wrong embedding, loss or answer."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import polymodal.losses.contrastive as contrastive
from polymodal.data.answers import check_row_choices, unique_choices
from polymodal.data.images import load_image
from polymodal.errors import PolymodalError
from polymodal.fusion import FUSIONS, build_fusion
from polymodal.losses import ClipLoss, contrastive_loss
from polymodal.models.inputs import as_images


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))


# -- pixels ------------------------------------------------------------------------------------------------------


def test_normalised_pixels_are_refused_with_a_pointer_to_embed_pixels(photo):
    x = np.asarray(photo).astype(np.float32) / 255
    normalised = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with pytest.raises(PolymodalError, match=r"negative values \(down to -2.*embed_pixels"):
        load_image(normalised.astype(np.float32))
    with pytest.raises(PolymodalError, match="looks normalised"):
        load_image(torch.from_numpy(normalised.transpose(2, 0, 1).copy()))  # a CHW tensor from a pipeline


def test_raw_float_pixels_and_rounding_below_zero_still_load(photo):
    x = np.asarray(photo).astype(np.float32)
    assert np.array_equal(np.asarray(load_image(x / 255)), np.asarray(photo))
    got = np.asarray(load_image(x - 0.005))  # resampling rounding, 0-255 scale
    assert np.abs(got.astype(int) - np.asarray(photo).astype(int)).max() <= 1


@pytest.mark.parametrize("shape", [(2, 20, 20), (20, 20, 5), (20, 20, 2)])
def test_an_array_that_is_no_image_shape_is_one_error(shape):
    with pytest.raises(PolymodalError, match=r"image array has shape .*pass one image as HxW"):
        load_image(np.zeros(shape, np.uint8))


def test_memoryview_bytes_are_one_image_and_a_dict_or_complex_array_is_refused(photo):
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    assert len(as_images(memoryview(buf.getvalue()))) == 1
    assert np.array_equal(np.asarray(load_image(memoryview(buf.getvalue()))), np.asarray(photo))
    with pytest.raises(PolymodalError, match=r"got dict; pass list\(d.values\(\)\)"):
        as_images({"a.jpg": 1})
    with pytest.raises(PolymodalError, match="dtype complex64 holds no pixels"):
        as_images(np.zeros((4, 4, 3), np.complex64))


# -- choices and labels ------------------------------------------------------------------------------------------


def test_one_flat_list_of_choices_is_every_rows_candidates():
    seen = []
    assert check_row_choices(["red", "blue"], 2, seen.append) == [["red", "blue"], ["red", "blue"]]
    assert seen == [["red", "blue"]]
    assert check_row_choices(["red", "blue"], 3, seen.append) == [["red", "blue"]] * 3


def test_choices_given_as_one_comma_string_say_to_pass_a_list():
    with pytest.raises(PolymodalError, match=r"choices is one string \('red, blue'\); .*\['red', 'blue'\]"):
        unique_choices("red, blue")
    assert list(unique_choices("yes").values()) == ["yes"]  # one string without a comma is one choice


def test_a_blank_label_is_refused_before_any_text_is_embedded():
    from polymodal.apps.zeroshot import PromptCache

    class NoText:
        def encode_text(self, texts):  # pragma: no cover - must not be reached
            raise AssertionError("embedded a blank label")

    cache = PromptCache(NoText())
    with pytest.raises(PolymodalError, match="label 1 is empty"):
        cache.get(["dog", " "], ("a photo of a {}.",))


# -- losses --------------------------------------------------------------------------------------------------------


def _pairs(n=4, d=8):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    return img, torch.nn.functional.normalize(img + 0.1 * torch.randn(n, d, generator=g), dim=1)


@pytest.mark.parametrize("scale", [0.0, -10.0, float("nan"), float("inf"), torch.tensor(-1.0)])
def test_a_logit_scale_that_is_not_positive_and_finite_is_refused(scale):
    with pytest.raises(PolymodalError, match="must be a positive finite multiplier"):
        contrastive_loss(*_pairs(), scale)


def test_a_diverged_learnable_scale_gives_a_nan_loss_for_the_trainer_to_report():
    assert torch.isnan(contrastive_loss(*_pairs(), torch.tensor(float("nan"))).loss)


def test_a_logit_scale_of_several_values_or_a_string_is_refused():
    with pytest.raises(PolymodalError, match=r"one number, got a tensor of shape \(4,\)"):
        contrastive_loss(*_pairs(), torch.full((4,), 10.0))
    with pytest.raises(PolymodalError, match="number or a scalar tensor, got str"):
        contrastive_loss(*_pairs(), "10")


def test_a_temperature_passed_as_the_logit_scale_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(contrastive, "_warned_of_small_scale", False)
    with caplog.at_level(logging.WARNING, logger="polymodal.losses.contrastive"):
        contrastive_loss(*_pairs(), 0.07)
        contrastive_loss(*_pairs(), 0.07)
        contrastive_loss(*_pairs(), torch.tensor(14.3))
    warned = [r for r in caplog.records if "looks like a temperature" in r.getMessage()]
    assert len(warned) == 1 and "1 / 0.07 = 14.3" in warned[0].getMessage()


def test_a_temperature_read_as_text_from_a_config_is_one_error():
    with pytest.raises(PolymodalError, match=r"temperature must be a number such as 0.07, got '0.07' \(str\)"):
        ClipLoss(temperature="0.07")


# -- fusion inputs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_fusion_names_a_float64_input_and_takes_integer_features(name):
    fusion = build_fusion(name, dims=(8, 6), out_dim=4)
    with pytest.raises(PolymodalError, match=r"modality 0 is torch.float64 but the module's weights are torch.float32"):
        fusion([torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 6)])
    ints = [torch.randint(0, 5, (2, 3, 8)), torch.randint(0, 5, (2, 6))]
    torch.testing.assert_close(fusion(ints).pooled, fusion([x.float() for x in ints]).pooled)


def test_fusion_under_autocast_takes_lower_precision_inputs():
    fusion = build_fusion("cross_attention", dims=(8, 6), out_dim=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion([torch.randn(2, 3, 8, dtype=torch.bfloat16), torch.randn(2, 6)])
    assert out.pooled.shape == (2, 4)


# -- batch sizes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["FusionEncoder", "Captioner"])
def test_encode_images_refuses_a_zero_batch_size_before_any_work(name):
    from polymodal.models.captioner import Captioner
    from polymodal.models.fusion_encoder import FusionEncoder

    cls = {"FusionEncoder": FusionEncoder, "Captioner": Captioner}[name]
    with pytest.raises(PolymodalError, match="batch_size"):
        cls.encode_images(object(), ["missing.jpg"], batch_size=0)


# -- index ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("paths, got", [(None, "got NoneType"), (3, "got int"), (b"x.jpg", "got bytes"),
                                        ([Path("a.jpg"), 3], "got a int")])
def test_index_remove_takes_paths_like_add(tmp_path, paths, got):
    from polymodal.index import ImageIndex

    with pytest.raises(PolymodalError, match=rf"remove\(\) takes image file paths, {got}"):
        ImageIndex(tmp_path / "db").remove(paths)
