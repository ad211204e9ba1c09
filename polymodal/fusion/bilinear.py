"""Multiplicative fusions: low-rank bilinear pooling (MLB / MFB) and tensor fusion (TFN)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.fusion.base import FusionModule, FusionOutput, masked_mean


class BilinearFusion(FusionModule):
    """Low-rank bilinear pooling of two modalities, MFB-style (Yu et al., 2017): a full bilinear map
    ``z_o = x^T W_o y`` with each ``W_o`` factored as rank ``factors``:
    ``z = SumPool_k((U x) * (V y))``, ``U: D_0 -> out_dim*factors``, ``V: D_1 -> out_dim*factors``.
    ``factors=1`` is MLB's Hadamard product (Kim et al., 2017) without its tanh.
    With ``normalize`` (default) the output gets MFB's signed square root and L2 normalisation.

    Options: ``factors`` (default 4), ``normalize``, ``dropout``."""

    name = "bilinear"
    min_modalities = max_modalities = 2

    def __init__(
        self, dims: Sequence[int], out_dim: int, factors: int = 4, normalize: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__(dims, out_dim)
        if not isinstance(factors, int) or factors <= 0:
            raise PolymodalError(f"bilinear fusion: factors must be a positive int, got {factors!r}")
        if not isinstance(normalize, bool):  # a JSON "false" is a true string: it normalised, silently
            raise PolymodalError(f"bilinear fusion: normalize must be true or false, got {normalize!r}")
        self.factors = factors
        self.normalize = normalize
        self.u = nn.Linear(self.dims[0], out_dim * factors)
        self.v = nn.Linear(self.dims[1], out_dim * factors)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        tokens, masks = self.prepare(inputs, masks)
        x, y = (masked_mean(t, m) for t, m in zip(tokens, masks))
        z = self.drop(self.u(x) * self.v(y)).view(x.shape[0], self.out_dim, self.factors).sum(dim=-1)
        if self.normalize:
            eps = 1e-6  # sqrt(|z| + eps) - sqrt(eps): the signed square root with a finite gradient at 0
            z = torch.sign(z) * (torch.sqrt(z.abs() + eps) - math.sqrt(eps))
            z = F.normalize(z, dim=-1)
        return FusionOutput(pooled=z)


class TensorFusion(FusionModule):
    """Tensor Fusion Network (Zadeh et al., 2017): each modality's mean goes through a small ReLU layer to
    ``h_i`` (``hidden`` wide), gets a constant 1 appended, and the outer product of all ``[h_i, 1]`` (which holds
    every unimodal, bimodal, ... term) is flattened and mapped by an MLP to out_dim.

    The product has ``prod_i (hidden_i + 1)`` features per sample: 81 for two modalities at hidden=8, 729 for
    three, 35,937 for three at hidden=32 (times out_dim weights in the next layer). Keep ``hidden`` small; a size
    above ``max_size`` is refused.

    Options: ``hidden`` (int or one per modality, default 8), ``post_hidden`` (default out_dim), ``max_size``
    (default 65,536), ``dropout``."""

    name = "tensor"
    per_modality_options = ("hidden",)

    def __init__(
        self,
        dims: Sequence[int],
        out_dim: int,
        hidden: int | Sequence[int] = 8,
        post_hidden: int | None = None,
        max_size: int = 1 << 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dims, out_dim)
        hidden = [hidden] * len(self.dims) if isinstance(hidden, int) else list(hidden)
        if len(hidden) != len(self.dims) or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise PolymodalError(
                f"tensor fusion: hidden must be a positive int or one per modality ({len(self.dims)}), got {hidden}"
            )
        size = math.prod(h + 1 for h in hidden)
        if size > max_size:
            raise PolymodalError(
                f"tensor fusion of {len(self.dims)} modalities with hidden={hidden} makes {size:,} features per "
                f"sample (over max_size={max_size:,}); lower hidden or raise max_size"
            )
        self.size = size
        self.subnets = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.ReLU()) for d, h in zip(self.dims, hidden))
        post_hidden = post_hidden or out_dim
        self.post = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(size, post_hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(post_hidden, out_dim),
        )  # fmt: skip

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        tokens, masks = self.prepare(inputs, masks)
        product = None
        for net, t, m in zip(self.subnets, tokens, masks):
            h = net(masked_mean(t, m))
            h = torch.cat([h, h.new_ones(h.shape[0], 1)], dim=-1)  # [B, h_i + 1]
            product = h if product is None else (product[:, :, None] * h[:, None, :]).flatten(1)
        return FusionOutput(pooled=self.post(product))
