"""Early (concat) fusion: masked-mean each modality, concatenate, then a small MLP."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from polymodal.fusion.base import FusionModule, FusionOutput, masked_mean, mlp


class ConcatFusion(FusionModule):
    """``[B, T_i, D_i]`` x M -> pooled ``[B, out_dim]`` = MLP(concat(mean_0, ..., mean_{M-1})).

    Feature-level fusion of pooled vectors: the baseline every other fusion should beat. (Token-level early fusion,
    one transformer over all tokens, is ``SingleStreamFusion``.) One modality is allowed, which makes it a plain MLP
    head: handy as a single-modality baseline.

    Options: ``hidden`` (MLP width, default out_dim), ``dropout``."""

    name = "concat"
    min_modalities = 1

    def __init__(self, dims: Sequence[int], out_dim: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__(dims, out_dim)
        self.mlp = mlp(sum(self.dims), hidden or out_dim, out_dim, dropout)

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        tokens, masks = self.prepare(inputs, masks)
        joint = torch.cat([masked_mean(t, m) for t, m in zip(tokens, masks)], dim=-1)  # [B, sum D_i]
        return FusionOutput(pooled=self.mlp(joint))
