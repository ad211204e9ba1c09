"""bf16 image inference (polymodal.load(..., precision="bf16")), chunked inference, and the crop-box transform."""

import numpy as np
import pytest
import torch

import polymodal
from polymodal.data.images import ImageTransform, _RESAMPLE
from polymodal.data.samples import sample_photos
from polymodal.encoders.frozen_trunk import bf16_supported
from polymodal.errors import PolymodalError

needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="this CPU has no bf16 instructions (avx512_bf16/AMX)")


@pytest.fixture(scope="module")
def photos():
    return [arr for arr, _ in sample_photos().values()]


@needs_bf16
def test_bf16_embeddings_match_fp32_and_training_stays_fp32(lite, photos):
    fast = polymodal.load("lite", precision="bf16")
    assert fast.image_tower.frozen is not None and fast.key == lite.key  # an fp32 index serves with it
    ref, got = lite.encode_image(photos), fast.encode_image(photos)
    cos = (ref * got).sum(1)
    assert cos.mean() > 0.99 and cos.min() > 0.95, cos
    assert np.array_equal((got @ ref.T).argmax(1), np.arange(len(photos)))  # each finds itself in an fp32 index
    # with gradients (training), the eager fp32 tower runs: the same numbers as the fp32 model, and they flow back
    pixels = torch.from_numpy(lite.transform(photos[:2])).requires_grad_(True)
    out = fast.image_tower.spatial(pixels)
    assert torch.equal(out.detach(), lite.image_tower.spatial(pixels).detach())
    out.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_chunked_inference_equals_one_pass(lite, photos):
    pixels = torch.from_numpy(lite.transform((photos * 2)[:11]))  # 11 images: chunks of 8 and 3
    assert len(pixels) > lite.image_tower.INFERENCE_CHUNK
    with torch.no_grad():
        chunked = lite.image_tower.spatial(pixels)
        whole = lite.image_tower.net.extract_features(pixels.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)


def test_precision_errors_are_one_clear_line(tmp_path):
    with pytest.raises(PolymodalError, match="unknown precision"):
        polymodal.load("lite", precision="fp16")
    with pytest.raises(PolymodalError, match="PyTorch runtime"):
        polymodal.load("lite", runtime="onnx", precision="bf16")


@needs_bf16
def test_precision_needs_the_lite_image_tower(tmp_path):
    from test_clip_checkpoints import make_tiny_clip

    with pytest.raises(PolymodalError, match="EfficientNet-Lite0"):
        polymodal.load(make_tiny_clip(tmp_path / "clip"), precision="bf16")


@needs_bf16
def test_serve_in_bf16_beside_a_vqa_model_without_that_tower(db):
    # --precision is for the embedding model's image tower: coco-yesno (no such tower) serves beside it in fp32
    pytest.importorskip("fastapi")
    from polymodal.serve import create_app

    for model, vqa_model in (("lite", "coco-yesno"), ("coco-yesno", None)):  # the second: the index's model embeds
        svc = create_app(model, db, vqa_model=vqa_model, precision="bf16").state.service
        assert svc.model.image_tower.precision == "bf16" and svc.vqa_model.name == "coco-yesno"
    from test_clip_checkpoints import make_tiny_clip  # an embedding model without it is still refused

    with pytest.raises(PolymodalError, match="EfficientNet-Lite0"):
        create_app(make_tiny_clip(db.parent / "clip"), db, precision="bf16")


def test_crop_box_resize_matches_resize_then_crop(photos):
    """The transform resizes only the crop's box; it must equal the reference resize-whole-image-then-crop."""
    from PIL import Image

    t = ImageTransform(resize=256, crop=224, resample="bicubic", crop_box=True)
    for arr in photos:
        img = Image.fromarray(arr).convert("RGB")
        w, h = img.size
        nw, nh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        nw, nh = max(224, nw), max(224, nh)
        left, top = (nw - 224) // 2, (nh - 224) // 2
        ref = np.asarray(img.resize((nw, nh), _RESAMPLE["bicubic"]).crop((left, top, left + 224, top + 224)), int)
        got = np.asarray(t.pil_crop(img), int)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1 and (got != ref).mean() < 0.001
        norm = t([img])[0]  # the multiply-add normalisation equals (x / 255 - mean) / std
        np.testing.assert_allclose(norm, ((got / 255.0 - 0.5) / 0.5).transpose(2, 0, 1), atol=1e-6)
