"""contrastive_loss with hard-negative texts (NegCLIP) and several captions of one image per batch (image_ids)."""

import pytest
import torch
import torch.nn.functional as F

from polymodal.errors import PolymodalError
from polymodal.losses import ClipLoss, contrastive_loss


def _pairs(b=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=1), F.normalize(torch.randn(b, d, generator=g), dim=1)


def _reference(img, txt, scale, negatives=None, ids=None):
    """The loss written out row by row: -mean over positives of log softmax, both directions, averaged."""
    ids = list(range(len(img))) if ids is None else ids.tolist()
    sim = scale * img @ txt.T
    i2t_sim = sim if negatives is None else torch.cat([sim, scale * img @ negatives.T], dim=1)
    n = len(img)
    i2t = t2i = 0.0
    for i in range(n):
        pos = [j for j in range(n) if ids[j] == ids[i]]
        i2t = i2t - sum(i2t_sim[i, j] - torch.logsumexp(i2t_sim[i], 0) for j in pos) / len(pos)
        t2i = t2i - sum(sim[j, i] - torch.logsumexp(sim[:, i], 0) for j in pos) / len(pos)
    return (i2t / n + t2i / n) / 2


def test_hard_negatives_join_the_image_to_text_softmax_only():
    img, txt = _pairs()
    neg = _pairs(b=3, seed=1)[1]
    out = contrastive_loss(img, txt, 10.0, negative_text_emb=neg)
    torch.testing.assert_close(out.loss, _reference(img, txt, 10.0, negatives=neg))
    plain = contrastive_loss(img, txt, 10.0)
    assert out.loss > plain.loss  # more wrong answers in the softmax can only cost
    assert out.logits_per_image.shape == (6, 6)  # the pair block, as without negatives


def test_a_negative_that_beats_the_true_caption_counts_as_a_miss():
    img = torch.eye(3)
    txt = torch.eye(3) * 0.5  # each image's own caption scores 0.5
    neg = torch.tensor([[1.0, 0.0, 0.0]])  # image 0 scores 1.0 with this negative
    assert contrastive_loss(img, txt, 1.0).accuracy_i2t == 1.0
    out = contrastive_loss(img, txt, 1.0, negative_text_emb=neg)
    assert out.accuracy_i2t == pytest.approx(2 / 3)
    assert out.accuracy_t2i == 1.0  # text->image never sees the negatives


def test_hard_negative_gradient_pushes_the_image_away_from_it():
    img, txt = _pairs()
    img.requires_grad_()
    neg = img[:1].detach().clone()  # a negative identical to image 0: the hardest there is
    contrastive_loss(img, txt, 10.0, negative_text_emb=neg).loss.backward()
    # gradient descent moves image 0 against the gradient: that must lower its similarity to the negative
    assert (-img.grad[0] @ neg[0]).item() < 0


def test_same_image_captions_are_not_counted_as_wrong_answers():
    img, txt = _pairs()
    ids = torch.tensor([0, 0, 1, 2, 2, 2])
    img = img[ids]  # rows 0-1 and 3-5 show one photo each, as a batch of several captions per image does
    out = contrastive_loss(img, txt, 10.0, image_ids=ids)
    torch.testing.assert_close(out.loss, _reference(img, txt, 10.0, ids=ids))
    # texts that sit on their photos: every row finds a right answer once ids say which rows share a photo
    perfect = contrastive_loss(img, F.normalize(img + 0.01, dim=1), 50.0, image_ids=ids)
    naive = contrastive_loss(img, F.normalize(img + 0.01, dim=1), 50.0)
    assert perfect.accuracy_i2t == 1.0 and perfect.accuracy_t2i == 1.0
    assert naive.accuracy_i2t < 1.0 and naive.accuracy_t2i < 1.0  # image 1 "picks" caption 0: wrong without ids


def test_unique_ids_are_clip_loss_exactly():
    img, txt = _pairs()
    ids = torch.tensor([5, 3, 9, 0, 1, 2])
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0, image_ids=ids).loss,
                               contrastive_loss(img, txt, 10.0).loss)


def test_ids_and_negatives_together_and_through_clip_loss():
    img, txt = _pairs()
    ids = torch.tensor([0, 0, 1, 1, 2, 3])
    neg = _pairs(b=2, seed=3)[1]
    out = ClipLoss(learnable=False)(img, txt, torch.tensor(7.0), negative_text_emb=neg, image_ids=ids)
    torch.testing.assert_close(out.loss, _reference(img, txt, 7.0, negatives=neg, ids=ids))


@pytest.mark.parametrize("kwargs, match", [
    ({"negative_text_emb": torch.zeros(2, 5)}, r"negative_text_emb must be \[M, 16\]"),
    ({"negative_text_emb": torch.zeros(2, 16, dtype=torch.float64)}, "negative_text_emb must be"),
    ({"negative_text_emb": [[0.0] * 16]}, "negative_text_emb must be a torch tensor"),
    ({"image_ids": torch.tensor([0, 1])}, "image_ids must be 6 integers"),
    ({"image_ids": torch.zeros(6)}, "image_ids must be 6 integers"),
])
def test_bad_extras_are_named(kwargs, match):
    img, txt = _pairs()
    with pytest.raises(PolymodalError, match=match):
        contrastive_loss(img, txt, 10.0, **kwargs)
