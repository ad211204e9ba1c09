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
