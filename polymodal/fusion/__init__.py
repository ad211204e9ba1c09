"""Fusion modules behind one interface (see `base` for the contract and `FusionOutput` for what comes back).

    from polymodal.fusion import build_fusion
    fusion = build_fusion("co_attention", dims=[768, 384], out_dim=256)
    out = fusion([image_tokens, text_tokens], [None, text_mask])   # [B, T_i, D_i] or [B, D_i]; True = real token
    out.pooled                                                      # [B, 256]

Names: concat (early), late (decision-level), attention_pool, cross_attention, co_attention, gated, bilinear
(low-rank, MFB), tensor (TFN), single_stream (VisualBERT/ViLT). cross_attention, co_attention and bilinear take
exactly two modalities; the rest take two or more (concat also one, as a single-modality baseline).
"""

from __future__ import annotations

import inspect
from typing import Sequence

from polymodal.errors import PolymodalError
from polymodal.fusion.attention import AttentionPoolFusion, CoAttentionFusion, CrossAttentionFusion
from polymodal.fusion.base import FusionModule, FusionOutput, masked_mean, masked_softmax
from polymodal.fusion.bilinear import BilinearFusion, TensorFusion
from polymodal.fusion.concat import ConcatFusion
from polymodal.fusion.gated import GatedFusion
from polymodal.fusion.late import LateFusion
from polymodal.fusion.single_stream import SingleStreamFusion

FUSIONS: dict[str, type[FusionModule]] = {
    cls.name: cls
    for cls in (
        ConcatFusion,
        LateFusion,
        AttentionPoolFusion,
        CrossAttentionFusion,
        CoAttentionFusion,
        GatedFusion,
        BilinearFusion,
        TensorFusion,
        SingleStreamFusion,
    )
}


def register_fusion(cls: type[FusionModule]) -> type[FusionModule]:
    """Make your own FusionModule subclass buildable by its ``name``: build_fusion, FusionEncoderConfig(fusion=name)
    and the saved models that name it. Usable as a class decorator; register it in every process that loads them."""
    if not (isinstance(cls, type) and issubclass(cls, FusionModule)):
        raise PolymodalError(f"register_fusion takes a FusionModule subclass, got {cls!r}")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolymodalError(f"{cls.__name__} needs its own `name = '...'` class attribute: the key models are saved with")
    old = FUSIONS.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise PolymodalError(f"the fusion name {name!r} is taken by {old.__module__}.{old.__qualname__}; pick another")
    FUSIONS[name] = cls  # the same class defined again (a re-run notebook cell) replaces itself
    return cls


def build_fusion(name: str, dims: Sequence[int], out_dim: int, **kw) -> FusionModule:
    """Build the fusion registered as ``name`` for modalities of sizes ``dims``; ``kw`` are that module's options."""
    if name not in FUSIONS:
        raise PolymodalError(f"unknown fusion {name!r}; choose one of {', '.join(FUSIONS)}")
    cls = FUSIONS[name]
    params = inspect.signature(cls.__init__).parameters
    options = [p for p in params if p not in ("self", "dims", "out_dim")]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise PolymodalError(
            f"{name} fusion has no option {', '.join(map(repr, unknown))}; its options are {', '.join(options)}"
        )
    return cls(dims, out_dim, **kw)  # the shared options are checked as any FusionModule is built


__all__ = [
    "FUSIONS",
    "build_fusion",
    "register_fusion",
    "FusionModule",
    "FusionOutput",
    "masked_mean",
    "masked_softmax",
    "ConcatFusion",
    "LateFusion",
    "AttentionPoolFusion",
    "CrossAttentionFusion",
    "CoAttentionFusion",
    "GatedFusion",
    "BilinearFusion",
    "TensorFusion",
    "SingleStreamFusion",
]
