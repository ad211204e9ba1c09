"""Attention-based fusions: attention pooling over every modality's tokens, cross-attention (one modality queries
another) and co-attention (two streams attending to each other, ViLBERT's co-TRM)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.fusion.base import FusionModule, FusionOutput, masked_mean
from polymodal.fusion.layers import (
    FeedForward,
    MultiHeadAttention,
    TransformerBlock,
    check_heads,
    check_layers,
)


def _zero_padding(tokens: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask[..., None], tokens, tokens.new_zeros(()))


class AttentionPoolFusion(FusionModule):
    """A learned query attends over the tokens of all modalities at once (each projected to out_dim and tagged with
    a modality-type embedding), then a residual feed-forward block: pooled ``[B, out_dim]``.

    attention: one ``[B, 1, T_i]`` entry per modality; across modalities a sample's weights sum to 1.

    Options: ``heads`` (default 4, must divide out_dim), ``dropout``."""

    name = "attention_pool"

    def __init__(self, dims: Sequence[int], out_dim: int, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__(dims, out_dim)
        check_heads(self.name, out_dim, heads)
        self.proj = nn.ModuleList(nn.Linear(d, out_dim) for d in self.dims)
        self.type_embedding = nn.Parameter(0.02 * torch.randn(len(self.dims), out_dim))
        self.query = nn.Parameter(0.02 * torch.randn(1, 1, out_dim))
        self.norm = nn.LayerNorm(out_dim)
        self.attn = MultiHeadAttention(out_dim, heads, dropout)
        self.ffn_norm = nn.LayerNorm(out_dim)
        self.ffn = FeedForward(out_dim, dropout=dropout)

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        tokens, masks = self.prepare(inputs, masks)
        x = torch.cat([p(t) + e for p, t, e in zip(self.proj, tokens, self.type_embedding)], dim=1)  # [B, T, D]
        mask = torch.cat(masks, dim=1)
        query = self.query.expand(x.shape[0], -1, -1)
        pooled, weights = self.attn(query, self.norm(x), mask)  # [B, 1, D], [B, H, 1, T]
        pooled = pooled + self.ffn(self.ffn_norm(pooled))
        attention = weights.mean(dim=1).split([t.shape[1] for t in tokens], dim=-1)
        return FusionOutput(pooled=pooled[:, 0], attention=tuple(attention))


class CrossAttentionFusion(FusionModule):
    """One modality's tokens (``query``, default 0) attend to the other's through ``layers`` pre-norm cross-attention
    blocks (attention then feed-forward, both residual), as in a captioner's decoder or Flamingo's cross layers.

    tokens: ``[B, T_query, out_dim]`` (mask = the query modality's mask); pooled: their masked mean.
    attention: the attended modality's entry is ``[B, T_query, T_key]`` (last layer); the query's entry is None.

    Options: ``query`` (0 or 1), ``heads`` (default 4), ``layers`` (default 1), ``dropout``."""

    name = "cross_attention"
    min_modalities = max_modalities = 2

    def __init__(
        self, dims: Sequence[int], out_dim: int, query: int = 0, heads: int = 4, layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__(dims, out_dim)
        if isinstance(query, bool) or not isinstance(query, int) or query not in (0, 1):  # 1.0 would index a list
            raise PolymodalError(
                f"cross_attention fusion: query must be 0 or 1 (the modality that asks), got {query!r}"
            )
        check_heads(self.name, out_dim, heads)
        check_layers(self.name, layers)
        self.query_index = query
        self.proj_query = nn.Linear(self.dims[query], out_dim)
        self.proj_key = nn.Linear(self.dims[1 - query], out_dim)
        self.blocks = nn.ModuleList(TransformerBlock(out_dim, heads, dropout, cross=True) for _ in range(layers))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        tokens, masks = self.prepare(inputs, masks)
        qi, ki = self.query_index, 1 - self.query_index
        x, context = self.proj_query(tokens[qi]), self.proj_key(tokens[ki])
        for block in self.blocks:
            x, weights = block(x, context, masks[ki])
        x = _zero_padding(self.norm(x), masks[qi])
        attention: list[Tensor | None] = [None, None]
        attention[ki] = weights.mean(dim=1) * masks[qi][..., None]  # [B, Tq, Tk]; padded queries give 0
        return FusionOutput(pooled=masked_mean(x, masks[qi]), tokens=x, mask=masks[qi], attention=tuple(attention))


class CoAttentionFusion(FusionModule):
    """Two streams attend to each other (ViLBERT's co-attentional transformer): in each of ``layers`` layers, stream
    A's tokens query stream B's and B's query A's, both from the previous layer's states, each followed by its own
    feed-forward block.

    tokens: ``[B, T_0 + T_1, out_dim]`` (both streams, in input order); pooled: a linear map of the concatenated
    masked means of the two streams. attention: entry 0 is ``[B, T_1, T_0]`` (stream 1 over modality 0's tokens),
    entry 1 is ``[B, T_0, T_1]``.

    Options: ``heads`` (default 4), ``layers`` (default 1), ``dropout``."""

    name = "co_attention"
    min_modalities = max_modalities = 2

    def __init__(
        self, dims: Sequence[int], out_dim: int, heads: int = 4, layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__(dims, out_dim)
        check_heads(self.name, out_dim, heads)
        check_layers(self.name, layers)
        self.proj = nn.ModuleList(nn.Linear(d, out_dim) for d in self.dims)
        # per layer: [A attends to B, B attends to A]
        self.blocks = nn.ModuleList(
            nn.ModuleList(TransformerBlock(out_dim, heads, dropout, cross=True) for _ in range(2))
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(out_dim) for _ in range(2))
        self.pool = nn.Linear(2 * out_dim, out_dim)

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        tokens, masks = self.prepare(inputs, masks)
        a, b = (p(t) for p, t in zip(self.proj, tokens))
        for block_a, block_b in self.blocks:
            (a, w_ab), (b, w_ba) = block_a(a, b, masks[1]), block_b(b, a, masks[0])
        a = _zero_padding(self.norms[0](a), masks[0])
        b = _zero_padding(self.norms[1](b), masks[1])
        pooled = self.pool(torch.cat([masked_mean(a, masks[0]), masked_mean(b, masks[1])], dim=-1))
        attention = (w_ba.mean(dim=1) * masks[1][..., None], w_ab.mean(dim=1) * masks[0][..., None])
        return FusionOutput(
            pooled=pooled, tokens=torch.cat([a, b], dim=1), mask=torch.cat(masks, dim=1), attention=attention
        )
