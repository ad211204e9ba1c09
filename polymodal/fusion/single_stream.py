"""Single-stream fusion (VisualBERT / ViLT): one transformer over all modalities' tokens, concatenated."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.fusion.base import FusionModule, FusionOutput
from polymodal.fusion.layers import TransformerBlock, check_heads, check_layers


class SingleStreamFusion(FusionModule):
    """``[CLS] + tokens_0 + tokens_1 + ...`` through ``layers`` pre-norm self-attention blocks. Each modality's
    tokens are projected to out_dim and get a modality-type embedding plus a learned position embedding from that
    modality's own table, counting only that modality's real tokens from 0: so padding never shifts a position,
    whether it sits at the end, at the start (left-padded text) or in another modality (a global slot index would
    shift them, and padding would change the output). A masked-out token in the middle counts as absent.

    pooled: the BERT pooler, ``tanh(W h_CLS)``. tokens: ``[B, sum T_i, out_dim]``, every modality's final states in
    input order (without [CLS]). attention: one ``[B, 1, T_i]`` entry per modality, the [CLS] token's last-layer
    weights (they sum to 1 with the weight [CLS] puts on itself).

    Options: ``heads`` (default 4), ``layers`` (default 2), ``max_len`` (per modality, default 512), ``dropout``."""

    name = "single_stream"

    def __init__(
        self,
        dims: Sequence[int],
        out_dim: int,
        heads: int = 4,
        layers: int = 2,
        max_len: int = 512,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dims, out_dim)
        check_heads(self.name, out_dim, heads)
        check_layers(self.name, layers)
        self.max_len = max_len
        self.proj = nn.ModuleList(nn.Linear(d, out_dim) for d in self.dims)
        self.type_embedding = nn.Parameter(0.02 * torch.randn(len(self.dims), out_dim))
        self.position_embedding = nn.Parameter(0.02 * torch.randn(len(self.dims), max_len, out_dim))
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, out_dim))
        self.blocks = nn.ModuleList(TransformerBlock(out_dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(out_dim)
        self.pooler = nn.Linear(out_dim, out_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        tokens, masks = self.prepare(inputs, masks)
        lengths = [t.shape[1] for t in tokens]
        if max(lengths) > self.max_len:
            raise PolymodalError(
                f"single_stream fusion: a modality has {max(lengths)} tokens but max_len={self.max_len}; "
                "build it with a larger max_len"
            )
        parts = [
            p(t) + self.type_embedding[i] + self.position_embedding[i][_positions(m)]
            for i, (p, t, m) in enumerate(zip(self.proj, tokens, masks))
        ]
        batch = tokens[0].shape[0]
        x = self.drop(torch.cat([self.cls.expand(batch, -1, -1), *parts], dim=1))  # [B, 1 + T, D]
        mask = torch.cat(masks, dim=1)
        key_mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        for block in self.blocks:
            x, weights = block(x, key_mask=key_mask)
        x = self.norm(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        states = torch.where(mask[..., None], x[:, 1:], x.new_zeros(()))
        attention = weights[:, :, :1, 1:].mean(dim=1).split(lengths, dim=-1)  # [CLS] row, token columns
        return FusionOutput(pooled=pooled, tokens=states, mask=mask, attention=tuple(attention))


def _positions(mask: Tensor) -> Tensor:
    """[B, T] bool -> [B, T] position ids: the number of real tokens before each slot (padding slots repeat their
    neighbour's id; their output is discarded)."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)
