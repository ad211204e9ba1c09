"""Projection heads that map tower features into the joint space. Built from config strings (architecture as data)."""

from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """[B, Din] -> [B, D]."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLPHead(nn.Module):
    """[B, Din] -> [B, D]: a residual-free two-layer MLP with dropout (more capacity, more overfitting)."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionPoolHead(nn.Module):
    """Spatial tokens [B, T, Din] -> [B, D]: a learned query attends over the grid (CLIP ResNet's attnpool idea),
    initialised to the plain mean so training starts from the pooled-feature solution."""

    def __init__(self, d_in: int, d_out: int, heads: int = 8, grid: int = 49) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(grid, d_in))
        self.attn = nn.MultiheadAttention(d_in, heads, batch_first=True)
        # a zero output projection (its bias starts at zero) makes the attention term vanish at init, so the head
        # starts as proj(mean of the tokens); the projection still gets gradients, so the attention learns
        nn.init.zeros_(self.attn.out_proj.weight)
        self.proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, tokens: torch.Tensor, return_weights: bool = False):
        tokens = tokens + self.pos[: tokens.shape[1]]
        query = tokens.mean(dim=1, keepdim=True)
        pooled, weights = self.attn(query, tokens, tokens, need_weights=True)
        out = self.proj(pooled[:, 0] + query[:, 0])
        return (out, weights[:, 0]) if return_weights else out


class ResidualHead(nn.Module):
    """[B, D] -> [B, D]: x + MLP(x), the MLP's last layer zero-initialised so training starts at the identity
    (keeps what the pretrained space already knows, e.g. zero-shot labels, and learns a correction)."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = MLPHead(d_in, d_out, hidden, dropout)
        nn.init.zeros_(self.mlp.net[-1].weight)
        nn.init.zeros_(self.mlp.net[-1].bias)
        self.same = d_in == d_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + (x if self.same else 0)


HEADS = {"linear": LinearHead, "mlp": MLPHead, "attention": AttentionPoolHead, "residual": ResidualHead,
         "conse_residual": ResidualHead}  # conse_residual: the DualEncoder adds the ConSE embedding as the base


def build_head(kind: str, d_in: int, d_out: int, dropout: float = 0.1) -> nn.Module:
    if kind not in HEADS:
        from polymodal.errors import PolymodalError

        raise PolymodalError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
    if kind in ("mlp", "residual", "conse_residual"):
        return HEADS[kind](d_in, d_out, dropout=dropout)
    return HEADS[kind](d_in, d_out)
