"""Large JPEGs decode at reduced scale (libjpeg DCT scaling) for the lite towers' transform: several times faster for
camera photos (benchmarks/jpeg_draft.py), the same pixels whichever path reads the file (indexing, training
features), and never for CLIP checkpoints, whose processors' full-size pixels are matched exactly."""

import numpy as np
import pytest
from PIL import Image

from polymodal.data.images import ImageTransform, load_image
from polymodal.encoders.efficientnet import LITE0_TRANSFORM


def _jpeg(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (h // 64, w // 64, 3), dtype=np.uint8)).resize((w, h)))
    noisy = np.clip(smooth.astype(np.int16) + rng.integers(-8, 9, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    return _jpeg(tmp_path_factory.mktemp("camera") / "photo.jpg", 2048, 1536)


def test_a_jpeg_decodes_at_the_smallest_scale_that_keeps_both_sides_at_min_size(camera, tmp_path):
    assert load_image(camera).size == (2048, 1536)
    assert load_image(camera, 256).size == (512, 384)  # 1/4: at 1/8 the short side (192) would be under 256
    assert load_image(camera.read_bytes(), 256).size == (512, 384)  # bytes too (tar shards, uploads)
    assert load_image(camera, 1000).size == (2048, 1536)  # 1/2 would be 768 high
    strip = _jpeg(tmp_path / "strip.jpg", 2048, 320)
    assert load_image(strip, 256).size == (2048, 320)  # its short side allows no reduction
    png = tmp_path / "photo.png"
    Image.open(camera).save(png)
    assert load_image(png, 256).size == (2048, 1536)  # only JPEGs have DCT scaling


def test_the_lite_transform_reads_the_reduced_decode_and_clip_transforms_the_full_one(camera):
    assert LITE0_TRANSFORM.draft_size == 256
    pixels = LITE0_TRANSFORM([camera])[0]
    assert np.array_equal(pixels, LITE0_TRANSFORM([load_image(camera, 256)])[0])
    full = LITE0_TRANSFORM([load_image(camera)])[0]
    diff = np.abs(pixels - full) * 255 * 0.5  # back to 0-255 levels (std 0.5)
    assert 0 < diff.mean() < 3  # another decode of the same photo, not another photo
    clip = ImageTransform(resize=224, crop=224, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    assert clip.draft_size is None
    assert np.array_equal(clip([camera])[0], clip([load_image(camera)])[0])


def test_fusion_encoders_and_captioners_read_camera_photos_at_reduced_scale_too(camera):
    from polymodal.models.captioner import CaptionerConfig
    from polymodal.models.fusion_encoder import FusionEncoderConfig

    for config in (FusionEncoderConfig(image_size=224), CaptionerConfig(image_size=224),
                   FusionEncoderConfig(image_size=64)):
        t = config.transform
        assert t.draft_size == config.image_size and t.resize == t.crop == config.image_size
        assert np.array_equal(t([camera])[0], t([load_image(camera, config.image_size)])[0])


class _CaptionSpy:
    """A captioner that says the size of each photo it is handed."""

    transform = ImageTransform(resize=224, crop=224, crop_box=True)

    def caption(self, images, beam=3, max_tokens=20):
        return [f"{im.size[0]}x{im.size[1]}" for im in images]


def test_caption_evaluation_reads_photos_as_the_caption_command_does(camera):
    from polymodal.data.pairs import Pair, PairSet
    from polymodal.eval.captions import evaluate_captions

    pairs = PairSet.from_pairs([Pair(camera, "a photo"), Pair(camera, "a picture")])
    out = evaluate_captions(_CaptionSpy(), pairs, progress=False)
    assert [e["caption"] for e in out["examples"]] == ["512x384"]  # 1/4 scale: 1/8 (256x192) is under 224


def test_training_reads_camera_photos_as_indexing_does(camera):
    from polymodal.data.pairs import open_pair_image

    assert open_pair_image(camera, LITE0_TRANSFORM.draft_size).size == (512, 384)


def test_image_features_of_a_camera_photo_match_what_encode_image_embeds(camera, tmp_path, monkeypatch):
    import torch

    from polymodal.models.dual_encoder import DualEncoder
    from polymodal.train.features import image_features

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    model = DualEncoder().eval()
    cached = image_features(model, [camera], progress=False)[0, 0].astype(np.float32)
    with torch.inference_mode():
        direct = model.image_cache_input(torch.from_numpy(LITE0_TRANSFORM([camera]))).float().numpy()[0]
    np.testing.assert_allclose(cached, direct, rtol=2e-3, atol=2e-3)  # the cache stores float16


def test_an_uploaded_camera_photo_embeds_as_the_same_file_on_disk(camera, lite, db):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    with TestClient(create_app(lite, db)) as client:
        r = client.post("/v1/embed", files={"image": ("photo.jpg", camera.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["vectors"]), lite.encode_image([camera]), atol=1e-5)


class _SizeSpy:
    """A VQA model and a captioner that report the size of the image the server hands them."""

    name, key = "spy", "spy@0"
    transform = ImageTransform(resize=384, crop=384)  # crop_box off: full decode

    def answer(self, image, question, choices=None, top_k=3):
        return {"answer": f"{image.size[0]}x{image.size[1]}", "score": 1.0, "alternatives": []}

    def caption(self, images, beam=3):
        return [f"{im.size[0]}x{im.size[1]}" for im in images]


def test_the_server_decodes_each_upload_for_the_model_that_reads_it(camera, lite, db):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    spy = _SizeSpy()
    upload = {"image": ("photo.jpg", camera.read_bytes(), "image/jpeg")}
    with TestClient(create_app(lite, db, vqa_model=spy, caption_model=spy)) as client:
        vqa = client.post("/v1/vqa", files=upload, data={"question": "is it?"})
        caption = client.post("/v1/caption", files=upload)
    assert vqa.status_code == 200 and vqa.json()["answer"] == "2048x1536", vqa.text
    assert caption.status_code == 200 and caption.json()["results"][0]["caption"] == "2048x1536", caption.text


def test_augmented_views_decode_large_enough_that_no_random_crop_is_upscaled(tmp_path):
    from polymodal.data.augment import Augment

    augment = Augment()
    size = augment.decode_size(LITE0_TRANSFORM.draft_size)
    mid = _jpeg(tmp_path / "mid.jpg", 640, 520)
    assert load_image(mid, size).size == (640, 520)  # the plain draft size (256) would have halved it
    img = load_image(_jpeg(tmp_path / "cam.jpg", 2048, 1536), size)
    shortest = min(min(b[2] - b[0], b[3] - b[1]) for b, _ in (augment.params(img.size, s) for s in range(2000)))
    assert img.size == (512, 384) and shortest >= LITE0_TRANSFORM.draft_size  # 1/4, not 1/8 (256x192)
    assert Augment(random_resized_crop=False).decode_size(256) == 256 and augment.decode_size(None) is None


def test_a_damaged_camera_upload_to_the_index_fails_before_anything_is_written(camera, lite, db, tmp_path):
    pytest.importorskip("fastapi")
    import shutil

    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    whole = camera.read_bytes()
    with TestClient(create_app(lite, copy)) as client:
        before = client.get("/v1/info").json()["index"]["count"]
        files = [("image", ("ok.jpg", whole, "image/jpeg")), ("image", ("cut.jpg", whole[:-500], "image/jpeg"))]
        r = client.post("/v1/index", files=files)  # validated at the reduced decode the model reads
        assert r.status_code == 400 and "cut.jpg" in r.json()["error"] and "truncated" in r.json()["error"], r.text
        assert client.get("/v1/info").json()["index"]["count"] == before
        assert not [p for p in (copy / "uploads").rglob("*") if p.is_file()]
        r = client.post("/v1/index", files=files[:1])
        assert r.status_code == 200 and client.get("/v1/info").json()["index"]["count"] == before + 1
