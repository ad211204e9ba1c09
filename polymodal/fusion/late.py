"""Late (decision-level) fusion: one predictor per modality, combined by a weighted average."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.fusion.base import FusionModule, FusionOutput, masked_mean, mlp


class LateFusion(FusionModule):
    """Each modality i gets its own predictor ``MLP_i(mean_i) -> [B, out_dim]`` (its "decision"); pooled is their
    weighted average. Weights are learned (softmax over one logit per modality, starting equal) or fixed
    (``weights=[...]``, normalised to sum 1).

    A modality with no real token in a sample (missing) is left out of that sample's average and the other
    weights are renormalised. Decision-level fusion only adds the modalities' contributions, so it cannot learn
    interactions (XOR of two modalities); it shines when modalities are independent evidence for the same answer.

    Options: ``hidden`` (predictor width, default out_dim), ``weights`` (fixed weights, one per modality),
    ``dropout``."""

    name = "late"

    def __init__(
        self,
        dims: Sequence[int],
        out_dim: int,
        hidden: int | None = None,
        weights: Sequence[float] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dims, out_dim)
        self.predictors = nn.ModuleList(mlp(d, hidden or out_dim, out_dim, dropout) for d in self.dims)
        if weights is None:
            self.logits = nn.Parameter(torch.zeros(len(self.dims)))
            self.register_buffer("fixed_weights", None)
        else:
            try:
                w = torch.as_tensor(list(weights), dtype=torch.float32)
            except (TypeError, ValueError):
                w = torch.full((0,), float("nan"))  # refused just below, with the weights as given
            # NaN passes both "< 0" and "sum <= 0" tests: check finiteness too
            if (w.shape != (len(self.dims),) or not bool(torch.isfinite(w).all()) or bool((w < 0).any())
                    or float(w.sum()) <= 0):
                raise PolymodalError(
                    f"late fusion: weights must be {len(self.dims)} finite non-negative numbers with a positive sum "
                    f"(one per modality), got {weights!r}"
                )
            self.logits = None
            self.register_buffer("fixed_weights", w / w.sum())

    def weights(self) -> Tensor:
        """``[M]`` the modality weights (sum 1) before leaving out missing modalities."""
        return self.fixed_weights if self.logits is None else self.logits.softmax(0)

    def decisions(
        self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``([B, M, out_dim]`` per-modality predictions, ``[B, M]`` bool: modality present in the sample)."""
        tokens, masks = self.prepare(inputs, masks)
        preds = torch.stack([p(masked_mean(t, m)) for p, t, m in zip(self.predictors, tokens, masks)], dim=1)
        present = torch.stack([m.any(dim=1) for m in masks], dim=1)
        return preds, present

    def forward(self, inputs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None) -> FusionOutput:
        preds, present = self.decisions(inputs, masks)
        w = self.weights().to(preds.dtype)[None, :] * present  # [B, M]
        w = w / w.sum(dim=1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny)
        pooled = (w[..., None] * preds).sum(dim=1)
        return FusionOutput(pooled=pooled, modality_weights=w, decisions=preds)
