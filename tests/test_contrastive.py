import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import PolymodalError
from polymodal.losses import ClipLoss, ContrastiveOutput, LearnableTemperature, contrastive_loss
from polymodal.train.gradcache import gradcache_backward


def _pairs(b=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=1), F.normalize(torch.randn(b, d, generator=g), dim=1)


def _reference(img, txt, scale):
    """CLIP's loss written out: -log softmax of the diagonal, both directions, averaged."""
    sim = scale * img @ txt.T
    b = len(sim)
    i2t = -sum(sim[i, i] - torch.logsumexp(sim[i, :], 0) for i in range(b)) / b
    t2i = -sum(sim[i, i] - torch.logsumexp(sim[:, i], 0) for i in range(b)) / b
    return (i2t + t2i) / 2


def test_matches_reference():
    img, txt = _pairs()
    scale = torch.tensor(1 / 0.07)
    out = contrastive_loss(img, txt, scale)
    assert isinstance(out, ContrastiveOutput)
    torch.testing.assert_close(out.loss, _reference(img, txt, scale))
    assert out.logits_per_image.shape == (8, 8)
    assert 0.0 <= out.accuracy_i2t <= 1.0 and 0.0 <= out.accuracy_t2i <= 1.0


def test_perfect_pairs_score_full_accuracy():
    img, _ = _pairs()
    out = contrastive_loss(img, img.clone(), 100.0)
    assert out.accuracy_i2t == 1.0 and out.accuracy_t2i == 1.0


def test_accuracy_counts_each_direction_on_its_own_axis():
    # logits [[1,0,0],[2,0,0],[0,0,1]]: image 1 picks caption 0, so i2t = 2/3; caption 0 picks image 1 and
    # caption 1 (a tie of zeros) image 0, so t2i = 1/3
    logits = torch.tensor([[1.0, 0, 0], [2, 0, 0], [0, 0, 1]])
    out = contrastive_loss(torch.eye(3), logits.T.contiguous(), 1.0)
    torch.testing.assert_close(out.logits_per_image, logits)
    assert out.accuracy_i2t == pytest.approx(2 / 3) and out.accuracy_t2i == pytest.approx(1 / 3)


def test_loss_falls_as_pairs_align():
    img, noise = _pairs(b=16, seed=1)
    losses = [contrastive_loss(img, F.normalize(a * img + noise, dim=1), 10.0).loss.item() for a in (0.0, 0.5, 1, 4)]
    assert losses == sorted(losses, reverse=True)


def test_temperature_init_and_clamp():
    temp = LearnableTemperature()
    torch.testing.assert_close(temp(), torch.tensor(1 / 0.07))
    with torch.no_grad():
        temp.log_scale.fill_(10.0)
    assert temp().item() == pytest.approx(100.0)
    temp.clamp_()
    assert temp.log_scale.item() == pytest.approx(math.log(100))
    with pytest.raises(PolymodalError):
        LearnableTemperature(0.001)  # scale 1000 > 100
    with pytest.raises(PolymodalError, match=r"in \[1/100, 1\]"):
        LearnableTemperature(2.0)  # scale 0.5: clamp_() would silently reset it to 1
    assert LearnableTemperature(1.0)().item() == pytest.approx(1.0)


def test_gradients_flow_to_embeddings_and_temperature():
    img, txt = _pairs()
    img.requires_grad_()
    txt.requires_grad_()
    loss = ClipLoss()
    loss(img, txt).loss.backward()
    for grad in (img.grad, txt.grad, loss.temperature.log_scale.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_frozen_temperature_and_external_scale():
    img, txt = _pairs()
    frozen = ClipLoss(learnable=False)
    assert not frozen.temperature.log_scale.requires_grad
    torch.testing.assert_close(frozen(img, txt, torch.tensor(5.0)).loss, _reference(img, txt, 5.0))


def test_shape_mismatch_is_a_user_error():
    img, txt = _pairs()
    with pytest.raises(PolymodalError, match=r"\[B, D\]"):
        contrastive_loss(img, txt[:, :4], 10.0)
    with pytest.raises(PolymodalError):
        contrastive_loss(img, txt[:4], 10.0)


def test_gather_without_process_group_is_local():
    img, txt = _pairs()
    gathered = contrastive_loss(img, txt, 10.0, gather=True)
    torch.testing.assert_close(gathered.loss, contrastive_loss(img, txt, 10.0).loss)


# --- GradCache ---------------------------------------------------------------------------------------------------


class Towers(nn.Module):
    """Two projection heads with dropout over precomputed features, and a learnable temperature."""

    def __init__(self, dropout=0.1):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 8))
        self.text = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 8))
        self.temperature = LearnableTemperature()

    def encode_image(self, x):
        return F.normalize(self.image(x), dim=-1)

    def encode_text(self, x):
        return F.normalize(self.text(x), dim=-1)

    def loss(self, img, txt):
        return contrastive_loss(img, txt, self.temperature()).loss


def _batch(n=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 12, generator=g, dtype=dtype), torch.randn(n, 10, generator=g, dtype=dtype)


# Equality checks run in float64: chunking changes the order of float sums, and in float32 that alone moves
# gradients of size ~1 by a few 1e-6, which would hide a real mismatch behind a loose tolerance.
TOL = {torch.float64: dict(atol=1e-6, rtol=0), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _plain(model, images, texts, chunk_size):
    """One ordinary backward; the forward runs in the same chunks so dropout draws the same masks."""
    model.zero_grad()
    img = torch.cat([model.encode_image(c) for c in images.split(chunk_size)])
    txt = torch.cat([model.encode_text(c) for c in texts.split(chunk_size)])
    loss = model.loss(img, txt)
    loss.backward()
    return loss.detach(), _grads(model)


def _cached(model, images, texts, chunk_size):
    model.zero_grad()
    loss, img, txt = gradcache_backward(model.encode_image, model.encode_text, images, texts, model.loss, chunk_size)
    assert img.shape == (len(images), 8) and not img.requires_grad
    return loss, _grads(model)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_size", [4, 5, 64])
def test_gradcache_matches_full_batch_eval(chunk_size, dtype):
    torch.manual_seed(0)
    model = Towers().eval().to(dtype)
    images, texts = _batch(dtype=dtype)
    ref_loss, ref = _plain(model, images, texts, chunk_size=len(images))  # truly one full-batch forward
    loss, got = _cached(model, images, texts, chunk_size)
    torch.testing.assert_close(loss, ref_loss, **TOL[dtype])
    assert set(got) == set(ref) and len(got) == 9  # both heads and the temperature
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], **TOL[dtype], msg=name)


@pytest.mark.parametrize("chunk_size", [4, 64])
def test_gradcache_matches_full_batch_with_dropout(chunk_size):
    torch.manual_seed(0)
    model = Towers(dropout=0.3).train().double()
    images, texts = _batch()
    torch.manual_seed(1)
    ref_loss, ref = _plain(model, images, texts, chunk_size)
    state_after_plain = torch.get_rng_state()
    torch.manual_seed(1)
    loss, got = _cached(model, images, texts, chunk_size)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=0, msg=name)
    # The replays are forked, so the caller's generator moves on exactly as after one ordinary step.
    assert torch.equal(torch.get_rng_state(), state_after_plain)


def test_gradcache_dropout_really_needs_the_rng_replay():
    """Guards the test above: with different masks the gradients would differ."""
    torch.manual_seed(0)
    model = Towers(dropout=0.3).train().double()
    images, texts = _batch()
    torch.manual_seed(1)
    _, ref = _plain(model, images, texts, 4)
    torch.manual_seed(2)
    _, other = _plain(model, images, texts, 4)
    assert not torch.allclose(ref["image.0.weight"], other["image.0.weight"], atol=1e-6)


def test_gradcache_splits_lists_and_dicts():
    torch.manual_seed(0)
    model = Towers().eval().double()
    images, texts = _batch(10)
    _, ref = _plain(model, images, texts, chunk_size=10)
    model.zero_grad()
    gradcache_backward(
        lambda rows: model.encode_image(torch.stack(rows)),
        lambda batch: model.encode_text(batch["x"]),
        list(images),
        {"x": texts},
        model.loss,
        chunk_size=3,
    )
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, ref[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
def test_gradcache_rejects_bad_chunk_size(chunk_size):
    model = Towers().double()
    images, texts = _batch(4)
    with pytest.raises(PolymodalError, match="chunk_size"):
        gradcache_backward(model.encode_image, model.encode_text, images, texts, model.loss, chunk_size)
