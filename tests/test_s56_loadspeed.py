"""Stop 56, load speed: the folded image tower shares the tensors it does not change; a vocabulary's word-piece
kinds are made once (each was redone on every model load)."""

from __future__ import annotations

import torch

from polymodal.encoders import fused_lite
from polymodal.encoders.text import minilm_path


def test_the_folded_tower_shares_the_tensors_it_does_not_change_and_folds_the_same(monkeypatch):
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    net = EfficientNet.from_name("efficientnet-lite0").eval()
    key = fused_lite.weights_key(net)
    fused = fused_lite.fused_copy(net)
    assert fused._fc.weight.data_ptr() == net._fc.weight.data_ptr()  # not copied
    assert not any(p.requires_grad for p in fused.parameters()) and all(p.requires_grad for p in net.parameters())
    assert fused_lite.weights_key(net) == key  # the original untouched: its folded copy stays valid
    monkeypatch.setattr(fused_lite, "_shared_tensors", lambda net: {})  # the deep copy it was
    copied = fused_lite.fused_copy(net)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(fused.extract_features(pixels), copied.extract_features(pixels))


def test_word_piece_kinds_are_made_once_per_vocabulary():
    from polymodal.data.tokenizer import FastTokenizer

    first, second = (FastTokenizer.from_model_folder(minilm_path(), 16) for _ in range(2))
    ids = torch.tensor([[101, 7592, 102]]).numpy()
    mask = ids > 0
    assert [c.tolist() for c in first.piece_counts(ids, mask)] == [c.tolist() for c in second.piece_counts(ids, mask)]
    assert first._kinds[0] is second._kinds[0] and first._kinds[1] is second._kinds[1]
    assert not first._kinds[0].flags.writeable
