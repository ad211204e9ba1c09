"""Stop 42, the Python API as a notebook or service uses it: model.transform takes one image as encode_image does,
embed_pixels refuses raw pixels in both runtimes, VQA predict holds a block of images at a time, and ONNX / bf16
models pickle and deep-copy."""

import copy
import pickle

import numpy as np
import pytest
from PIL import Image

import polymodal
from polymodal.errors import PolymodalError


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from test_export_audit import export_tiny_clip

    return export_tiny_clip(tmp_path_factory.mktemp("s42-api"))[1]


def test_transform_takes_one_image_as_encode_image_does(lite, gallery):
    path = sorted(gallery.glob("*.jpg"))[0]
    batch = lite.transform([path])
    assert batch.shape == (1, 3, 224, 224)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    # one path was read character by character; one [H, W, 3] array as H images of one pixel row each
    for one in (str(path), path, (p for p in [path])):
        np.testing.assert_allclose(lite.transform(one), batch, atol=1e-6)
    for one in (pixels, Image.fromarray(pixels)):  # decoded in full, not at the JPEG's reduced scale: their own batch
        np.testing.assert_allclose(lite.transform(one), lite.transform([pixels]), atol=1e-6)
    np.testing.assert_allclose(lite.embed_pixels(lite.transform(str(path))), lite.encode_image(str(path)), atol=1e-5)


def test_embed_pixels_refuses_raw_pixels_and_takes_float64(lite, gallery):
    pixels = lite.transform(sorted(gallery.glob("*.jpg"))[:2])
    with pytest.raises(PolymodalError, match=r"got dtype uint8; pass raw images .* to encode_image"):
        lite.embed_pixels(np.zeros((1, 3, 224, 224), np.uint8))
    with pytest.raises(PolymodalError, match=r"got shape \[3, 224, 224\]; for one image add the batch axis"):
        lite.embed_pixels(pixels[0])
    with pytest.raises(PolymodalError, match=r"\[B, 3, H, W\].*got shape \[1, 224, 224, 3\]"):
        lite.embed_pixels(pixels[:1].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(lite.embed_pixels(pixels.astype(np.float64)), lite.embed_pixels(pixels), atol=1e-6)


def test_the_onnx_runtime_refuses_integer_pixels_rather_than_embedding_them(tiny_export, gallery):
    model = polymodal.load(tiny_export)
    size = model.transform.crop
    raw = np.full((1, 3, size, size), 200, np.uint8)  # was embedded as if 200 were a normalised value
    with pytest.raises(PolymodalError, match=r"got dtype uint8"):
        model.embed_pixels(raw)
    with pytest.raises(PolymodalError, match=rf"takes pixels of {size}x{size} .*got {size + 8}x{size + 8}"):
        model.embed_pixels(np.zeros((1, 3, size + 8, size + 8), np.float32))
    assert model.embed_pixels(model.transform(sorted(gallery.glob("*.jpg"))[0])).shape == (1, model.dim)


def test_vqa_predict_encodes_a_block_of_distinct_images_at_a_time(easy_vqa, gallery, monkeypatch):
    import polymodal.models.fusion_encoder as fusion_encoder

    photos = sorted(gallery.glob("*.jpg"))[:3]
    images = [photos[i] for i in (0, 1, 0, 2, 1, 2, 0)]
    questions = ["what color is the shape?", "what shape is it?"] * 3 + ["what color is the shape?"]
    alone = [easy_vqa.answer(i, q) for i, q in zip(images, questions)]
    monkeypatch.setattr(fusion_encoder, "IMAGE_BLOCK", 2, raising=False)
    encoded = []
    encode = easy_vqa.encode_images
    monkeypatch.setitem(vars(easy_vqa), "encode_images", lambda batch, *a, **k: encoded.append(len(batch)) or
                        encode(batch, *a, **k))
    got = easy_vqa.predict(images, questions)
    # all of them were encoded and held at once (0.25 MB of grid per photo: 20,000 photos held 5 GB)
    assert encoded == [2, 1]  # each distinct photo once, two at a time
    assert [a for a, _ in got] == [r["answer"] for r in alone]
    np.testing.assert_allclose([s for _, s in got], [r["score"] for r in alone], atol=1e-4)
    encoded.clear()
    choices = ["red", "blue", "circle"]
    chosen = easy_vqa.predict_choices(images, questions, choices)
    assert encoded == [2, 1]
    best = [easy_vqa.answer(i, q, choices=choices)["alternatives"][0] for i, q in zip(images, questions)]
    assert [a for a, _ in chosen] == [a for a, _ in best]
    np.testing.assert_allclose([s for _, s in chosen], [s for _, s in best], atol=1e-4)


def test_an_onnx_model_pickles_and_deep_copies(tiny_export, gallery):
    model = polymodal.load(tiny_export, threads=1)
    photo = sorted(gallery.glob("*.jpg"))[0]
    # both raised TypeError: cannot pickle 'InferenceSession' object
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert copied.key == model.key and copied.source == model.source
        np.testing.assert_allclose(copied.encode_image(photo), model.encode_image(photo), atol=1e-6)
        np.testing.assert_allclose(copied.encode_text("a red ball"), model.encode_text("a red ball"), atol=1e-6)


def test_a_bf16_model_pickles(gallery):
    from polymodal.encoders.frozen_trunk import bf16_supported

    if not bf16_supported():
        pytest.skip("this CPU has no bf16 instructions")
    model = polymodal.load("lite", precision="bf16")
    photo = sorted(gallery.glob("*.jpg"))[0]
    copied = pickle.loads(pickle.dumps(model))  # RuntimeError: Tried to serialize object ... _Features
    assert copied.image_tower.precision == "bf16" and copied.image_tower.frozen is not None
    np.testing.assert_allclose(copied.encode_image(photo), model.encode_image(photo), atol=1e-6)


def test_a_zero_dimensional_array_of_a_path_is_one_image(lite, gallery):
    path = str(sorted(gallery.glob("*.jpg"))[0])
    np.testing.assert_array_equal(lite.encode_image(np.array(path)), lite.encode_image([path]))
