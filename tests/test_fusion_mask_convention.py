"""Fusion masks are True for real tokens; PyTorch's key_padding_mask (True = padding) read that way is warned of
once, and never for ordinary padding or compiled graphs."""

import logging

import pytest
import torch

from polymodal.fusion import FUSIONS, build_fusion

MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()  # right padding, one full row


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_an_inverted_mask_is_warned_of_once(name, caplog):
    torch.manual_seed(0)
    fusion = build_fusion(name, [8, 8], 8).eval()
    x = [torch.randn(3, 4, 8), torch.randn(3, 5, 8)]
    with caplog.at_level(logging.WARNING, logger="polymodal.fusion.base"):
        fusion(x, [None, MASK])
        fusion([x[0], x[1][:, :3]], [None, MASK[:, :3]])  # truncated, still real tokens first
        assert not caplog.records
        fusion(x, [None, ~MASK])
        fusion(x, [None, ~MASK])
    assert len(caplog.records) == 1 and "mask 1 looks inverted" in caplog.text and "pass ~mask" in caplog.text


def test_left_padding_alone_is_not_warned_of(caplog):
    fusion = build_fusion("concat", [8, 8], 8)
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]).bool()  # left padding, no empty row
    with caplog.at_level(logging.WARNING, logger="polymodal.fusion.base"):
        fusion([torch.randn(2, 8), torch.randn(2, 5, 8)], [None, left])
    assert not caplog.records
