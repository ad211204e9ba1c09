"""Small transformer pieces shared by the attention-based fusions, written out so that masking is exact and the
attention weights come back: multi-head attention with a key padding mask, a feed-forward block, a pre-norm block."""

from __future__ import annotations

import math

from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.fusion.base import masked_softmax


def check_heads(name: str, dim: int, heads: int) -> None:
    if not isinstance(heads, int) or heads <= 0 or dim % heads:
        raise PolymodalError(
            f"{name} fusion: heads={heads!r} must be a positive int dividing out_dim={dim}; "
            f"pick one of {[h for h in range(1, dim + 1) if dim % h == 0]}"
        )


def check_layers(name: str, layers: int) -> None:
    if not isinstance(layers, int) or layers <= 0:
        raise PolymodalError(f"{name} fusion: layers must be a positive int, got {layers!r}")


class MultiHeadAttention(nn.Module):
    """Queries ``[B, Tq, D]`` attend over context ``[B, Tk, D]`` with a ``[B, Tk]`` key mask (True = real).

    Returns ``([B, Tq, D], weights [B, H, Tq, Tk])``; masked keys get exactly 0 weight, and a query whose keys are
    all padded gets a zero output (no NaN)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, H, T, D/H]
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, k, v = self._split(self.q(x)), self._split(self.k(context)), self._split(self.v(context))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, Tq, Tk]
        weights = masked_softmax(scores, None if key_mask is None else key_mask[:, None, None, :])
        out = (self.drop(weights) @ v).transpose(1, 2).reshape(x.shape)  # [B, Tq, D]
        return self.out(out), weights


class FeedForward(nn.Sequential):
    """``[.., D] -> [.., D]``: Linear(D, ratio*D) -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, ratio: int = 4, dropout: float = 0.0) -> None:
        hidden = ratio * dim
        drop = dropout
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim), nn.Dropout(drop))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + Attn(LN(x), LN(context))`` then ``x + FFN(LN(x))``.

    ``cross=False``: self-attention (context is x itself); ``cross=True``: x attends to a separate context, which
    gets its own LayerNorm. Returns ``(x [B, Tq, D], weights [B, H, Tq, Tk])``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, cross: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(dim) if cross else None
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, key_mask: Tensor | None = None):
        h = self.norm(x)
        ctx = h if self.context_norm is None else self.context_norm(context)
        attended, weights = self.attn(h, ctx, key_mask)
        x = x + self.drop(attended)
        x = x + self.ffn(self.ffn_norm(x))
        return x, weights
