"""Gated fusion: the Gated Multimodal Unit (Arevalo et al., 2017), generalised to M modalities."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from polymodal.fusion.base import FusionModule, FusionOutput, masked_mean, masked_softmax


class GatedFusion(FusionModule):
    """``h_i = tanh(W_i mean_i)``; gates ``z = softmax over modalities of W_z concat(mean_0, ..)`` per feature;
    pooled ``= sum_i z_i * h_i`` (for two modalities softmax is the GMU's sigmoid ``z`` and ``1 - z``).

    The gates see every modality, so each sample chooses per feature which modality to trust. A modality with no
    real token in a sample gets gate 0. modality_weights: ``[B, M]`` the mean gate per modality.

    Options: ``dropout``."""

    name = "gated"

    def __init__(self, dims: Sequence[int], out_dim: int, dropout: float = 0.0) -> None:
        super().__init__(dims, out_dim)
        self.proj = nn.ModuleList(nn.Linear(d, out_dim) for d in self.dims)
        self.gate = nn.Linear(sum(self.dims), len(self.dims) * out_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        tokens, masks = self.prepare(inputs, masks)
        means = [masked_mean(t, m) for t, m in zip(tokens, masks)]
        h = torch.stack([torch.tanh(p(self.drop(x))) for p, x in zip(self.proj, means)], dim=1)  # [B, M, D]
        logits = self.gate(self.drop(torch.cat(means, dim=-1))).view(h.shape)
        present = torch.stack([m.any(dim=1) for m in masks], dim=1)  # [B, M]
        z = masked_softmax(logits, present[..., None], dim=1)
        return FusionOutput(pooled=(z * h).sum(dim=1), modality_weights=z.mean(dim=-1))
