"""Contrastive fine-tuning review (stop 43): validation recall with unfrozen image blocks."""

import numpy as np
import torch

from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
from polymodal.train.contrastive import retrieval_eval


def test_validation_runs_the_image_side_a_batch_at_a_time():
    # with --image-trainable-blocks the cache holds the trunk, and the unfrozen blocks ran over the whole validation
    # set in one call: ~1 MB (2 blocks) to ~10 MB (16 blocks) of memory per validation photo at once
    model = DualEncoder(DualEncoderConfig(embed_dim=8)).eval()
    sizes = []
    image_from_cache = model.image_from_cache
    model.image_from_cache = lambda x: sizes.append(len(x)) or image_from_cache(x)
    rng = np.random.default_rng(0)
    n = 300
    feats = rng.random((1, n, 1280)).astype(np.float16)
    texts = rng.random((n, 384)).astype(np.float32)
    m = retrieval_eval(model, feats, texts, np.arange(n))
    assert sum(sizes) == n and max(sizes) <= 128
    # the same figures as one pass over all photos
    with torch.no_grad():
        img = torch.nn.functional.normalize(image_from_cache(torch.from_numpy(feats[0].astype(np.float32))), dim=-1)
        txt = torch.nn.functional.normalize(model.text_from_pooled(torch.from_numpy(texts)), dim=-1)
    from polymodal.eval.retrieval import retrieval_metrics
    whole = retrieval_metrics(img.numpy(), txt.numpy(), np.arange(n))
    assert all(abs(m["val/" + k] - v) < 1e-9 for k, v in whole.items())


def test_feature_caches_of_nothing_are_one_clear_error(monkeypatch, tmp_path):
    import pytest

    from polymodal.errors import PolymodalError
    from polymodal.train.features import image_features, text_features

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    model = DualEncoder(DualEncoderConfig(embed_dim=8)).eval()
    for _ in range(2):  # the second call met the file the first had stored
        with pytest.raises(PolymodalError, match="no captions to encode"):
            text_features(model, [], progress=False)
    with pytest.raises(PolymodalError, match="no images to encode"):
        image_features(model, [], skip_unreadable=True, progress=False)


def test_one_view_is_cached_once_whatever_the_seed(monkeypatch, tmp_path):
    from PIL import Image

    from polymodal.data.augment import Augment
    from polymodal.train.features import image_features

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    photos = []
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 10, 10)).save(tmp_path / f"{i}.png")
        photos.append(tmp_path / f"{i}.png")
    model = DualEncoder(DualEncoderConfig(embed_dim=8)).eval()
    calls = []
    real = model.image_cache_input
    monkeypatch.setitem(vars(model), "image_cache_input", lambda x: calls.append(len(x)) or real(x))
    first = image_features(model, photos, views=1, seed=0, progress=False)
    again = image_features(model, photos, views=1, seed=7, augment=Augment(), progress=False)
    assert sum(calls) == 3 and np.array_equal(np.asarray(first), np.asarray(again))
    image_features(model, photos, views=2, seed=0, progress=False)
    image_features(model, photos, views=2, seed=7, progress=False)
    assert sum(calls) == 3 + 6 + 6  # with augmented views the seed draws them: each seed its own cache
