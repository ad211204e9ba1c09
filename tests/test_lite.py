"""The built-in `lite` model: real pretrained towers, ConSE joint space, zero-shot classification."""

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.images import load_image
from polymodal.data.samples import sample_photos
from polymodal.resources import imagenet_classes


@pytest.fixture(scope="module")
def photos():
    return {name: arr for name, (arr, _) in sample_photos().items()}


def _imagenet_top(lite, arr, k=3):
    pixels = torch.from_numpy(lite.transform([arr]))
    with torch.no_grad():
        probs = lite.image_tower(pixels).softmax(dim=-1)[0]
    return [imagenet_classes()[i] for i in probs.topk(k).indices.tolist()]


def test_preprocessing_matches_the_weights_on_real_photos(lite, photos):
    # Wrong mean/std/resize still gives some answer; these confident hits need the right preprocessing.
    assert _imagenet_top(lite, photos["coffee"], 1) == ["espresso"]
    assert any("cat" in c or c == "Egyptian Mau" for c in _imagenet_top(lite, photos["cat"]))
    assert "missile" in _imagenet_top(lite, photos["rocket"])


def test_image_tower_equals_the_reference_forward(lite, photos):
    pixels = torch.from_numpy(lite.transform([photos["cat"], photos["coffee"]]))
    with torch.no_grad():
        ours = lite.image_tower.logits(pixels)
        ref = lite.image_tower.net(pixels)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_embeddings_are_normalised_float32_in_one_space(lite, photos, gallery):
    img = lite.encode_image([gallery / "cat.jpg", Image.fromarray(photos["coffee"]), photos["rocket"]])
    txt = lite.encode_text(["a tabby cat", "a cup of coffee", "a rocket"])
    assert img.dtype == np.float32 and img.shape == (3, 384) and txt.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    sim = img @ txt.T
    assert (sim.argmax(axis=1) == np.arange(3)).all(), sim


def test_batching_does_not_change_results(lite, photos):
    arrs = [photos[n] for n in ("cat", "coffee", "rocket", "moon", "astronaut")]
    together = lite.encode_image(arrs, batch_size=5)
    apart = np.concatenate([lite.encode_image([a], batch_size=1) for a in arrs])
    np.testing.assert_allclose(together, apart, atol=1e-5)
    texts = ["a dog", "a much longer sentence about a dog running on the beach"]
    np.testing.assert_allclose(lite.encode_text(texts), np.concatenate([lite.encode_text([t]) for t in texts]), atol=1e-5)


def test_zero_shot_classification_ranks_real_photos(lite, photos):
    labels = ["cat", "coffee", "rocket", "motorcycle", "flower"]
    names = ["cat", "coffee", "rocket", "motorcycle", "flower"]
    results = lite.classify([photos[n] for n in names], labels)
    for name, ranked in zip(names, results):
        assert ranked[0][0] == name, (name, ranked)
        scores = [s for _, s in ranked]
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4


def test_label_prompts_are_cached_between_calls(lite, photos):
    labels, templates = ["cat", "dog", "bird"], ["a photo of a {}.", "a picture of a {}."]
    before = lite._prompts.misses
    lite.classify([photos["cat"]], labels, templates=templates)
    lite.classify([photos["coffee"]], labels, templates=templates, top_k=2)
    assert lite._prompts.misses == before + 1


def test_class_prompt_matrix_is_cached_on_disk(lite, monkeypatch):
    from polymodal.cache import cache_dir
    from polymodal.models.conse import ConSEModel

    files = list(cache_dir().glob("conse-classes-*.npy"))
    assert len(files) == 1 and np.load(files[0]).shape == (1000, 384)
    # A second model must read the cached matrix instead of re-encoding 1000 prompts.
    from polymodal.encoders.text import SentenceEncoder

    calls = []
    real = SentenceEncoder.forward
    monkeypatch.setattr(SentenceEncoder, "forward", lambda self, t: calls.append(len(t)) or real(self, t))
    again = ConSEModel()
    assert calls == [] and np.array_equal(again.class_matrix.numpy(), lite.class_matrix.numpy())


def test_gif_first_frame_and_grey_images_load(tmp_path, photos):
    frames = [Image.fromarray(photos["cat"]), Image.fromarray(photos["coffee"])]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    img = load_image(tmp_path / "a.gif")
    assert img.mode == "RGB" and img.size == frames[0].size
    assert load_image(photos["moon"]).mode == "RGB"  # 2-D grey array
