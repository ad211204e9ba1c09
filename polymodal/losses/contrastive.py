"""CLIP's symmetric InfoNCE loss, a learnable temperature, and feature gathering across ranks.

Pure function `contrastive_loss` plus thin modules `LearnableTemperature` and `ClipLoss`, as TorchMultimodal's
contrastive_loss_with_temperature and open_clip's ClipLoss (gather_with_grad=True, local_loss=False) do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import PolymodalError

DEFAULT_TEMPERATURE = 0.07  # CLIP's initial temperature: logit scale 1/0.07 ~ 14.3
MAX_LOGIT_SCALE = 100.0  # CLIP clamps the logit scale here to keep training stable


@dataclass
class ContrastiveOutput:
    loss: Tensor  # scalar, mean of image->text and text->image cross-entropy
    logits_per_image: Tensor  # [N, N] scaled similarities over the (global) batch; logits_per_text is its .T
    accuracy_i2t: float  # share of images whose best-scoring text is their own
    accuracy_t2i: float  # share of texts whose best-scoring image is their own


def _all_gather(out: Tensor, x: Tensor) -> None:
    # torch 2.13 renamed all_gather_into_tensor (a FutureWarning per call under torchrun); older torch has only it
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, x)


def _reduce_scatter_sum(out: Tensor, x: Tensor) -> None:
    (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(out, x, op=dist.ReduceOp.SUM)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for this rank's rows (reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.contiguous()
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
        _all_gather(out, x)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        local = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
        _reduce_scatter_sum(local, grad)
        return local


def _gather(image_emb: Tensor, text_emb: Tensor) -> tuple[Tensor, Tensor]:
    # all_gather needs equal shapes on every rank; checking first turns a hang or a cryptic backend error into
    # one clear message, raised on every rank alike since every rank sees all shapes.
    shape = torch.tensor([image_emb.shape], device=image_emb.device)  # [1, 2]: gathers along dim 0
    shapes = shape.new_empty((dist.get_world_size(), 2))  # [world, 2]
    _all_gather(shapes, shape)
    if not bool((shapes == shape).all()):  # same verdict on every rank
        raise PolymodalError(
            f"contrastive_loss(gather=True) needs the same [B, D] on every rank, got {shapes.tolist()}; "
            "use DistributedSampler with drop_last=True and a DataLoader with drop_last=True"
        )
    return _GatherWithGrad.apply(image_emb), _GatherWithGrad.apply(text_emb)


def contrastive_loss(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, *, gather: bool = False
) -> ContrastiveOutput:
    """Symmetric InfoNCE (CLIP): pair i of `image_emb` [B, D] matches pair i of `text_emb` [B, D].

    Callers L2-normalise the embeddings (the loss uses plain dot products, so unnormalised inputs silently change
    the effective temperature). `logit_scale` is the multiplier already exponentiated, e.g. LearnableTemperature().

    gather=True with torch.distributed initialised and world size > 1: embeddings from all ranks are gathered with
    gradients and every rank computes the same loss over the global batch N = world_size * B. The gather's backward
    sums every rank's gradient, so each rank's local gradient is world_size times its share; DDP's gradient
    averaging divides that by world_size, which leaves exactly the single-process gradient on the global batch.
    Without DDP (or another mean all-reduce of gradients), divide by world_size yourself. Parameters used after the
    gather (a learnable temperature) get the same, already global, gradient on every rank.
    """
    for what, x in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not isinstance(x, Tensor):
            raise PolymodalError(f"contrastive_loss: {what} must be a torch tensor [B, D], got {type(x).__name__} "
                                 "(torch.as_tensor turns arrays and lists into one)")
    if isinstance(logit_scale, torch.nn.Module):
        raise PolymodalError("contrastive_loss: logit_scale is a module; pass its value, e.g. temperature()")
    if image_emb.dtype != text_emb.dtype:
        raise PolymodalError(f"contrastive_loss: image_emb is {image_emb.dtype} but text_emb is {text_emb.dtype}; "
                             "cast both to one dtype")
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise PolymodalError(
            f"contrastive_loss needs image and text embeddings of the same shape [B, D], got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}; project both towers to one width, one row a pair"
        )
    if image_emb.shape[0] == 0:
        raise PolymodalError("contrastive_loss got an empty batch; pass at least one image-text pair")
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        image_emb, text_emb = _gather(image_emb, text_emb)

    logits_per_image = logit_scale * image_emb @ text_emb.T  # [N, N]
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    loss = (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2
    with torch.no_grad():
        acc_i2t = (logits_per_image.argmax(dim=1) == targets).float().mean().item()
        acc_t2i = (logits_per_image.argmax(dim=0) == targets).float().mean().item()
    return ContrastiveOutput(loss, logits_per_image, acc_i2t, acc_t2i)


class LearnableTemperature(nn.Module):
    """Learnable logit scale: a parameter log_scale = log(1 / temperature); forward() returns exp(log_scale) <= 100.

    The output is clamped on the way out (TorchMultimodal's choice), so the loss never sees a scale above
    `max_scale` whatever the optimiser does. While clamped the parameter gets no gradient, so if weight decay or
    momentum pushed it past the limit it could not come back on its own; call `clamp_()` after optimizer.step(),
    as CLIP's training loop does, to pin the parameter itself at the limit.
    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, max_scale: float = MAX_LOGIT_SCALE):
        super().__init__()
        if not 0 < temperature <= 1 or not 1 / temperature <= max_scale:  # clamp_() keeps the scale in [1, max]
            raise PolymodalError(
                f"temperature {temperature} is out of range; pass a value in [1/{max_scale:g}, 1] such as 0.07"
            )
        self.max_scale = max_scale
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def forward(self) -> Tensor:
        """The logit scale, a scalar tensor."""
        return self.log_scale.exp().clamp(max=self.max_scale)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Pin the parameter to [0, log(max_scale)], CLIP's in-place clamp; call after optimizer.step()."""
        self.log_scale.clamp_(0, math.log(self.max_scale))


class ClipLoss(nn.Module):
    """`contrastive_loss` with its own LearnableTemperature (learnable=False freezes it).

    Pass `logit_scale` to forward to use a model-owned scale instead (as CLIP checkpoints store it with the model).
    """

    def __init__(
        self,
        temperature: float = DEFAULT_TEMPERATURE,
        *,
        learnable: bool = True,
        max_scale: float = MAX_LOGIT_SCALE,
        gather: bool = False,
    ):
        super().__init__()
        self.temperature = LearnableTemperature(temperature, max_scale)
        self.temperature.requires_grad_(learnable)
        self.gather = gather

    def forward(self, image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | None = None) -> ContrastiveOutput:
        """image_emb, text_emb: [B, D], L2-normalised."""
        scale = self.temperature() if logit_scale is None else logit_scale
        return contrastive_loss(image_emb, text_emb, scale, gather=self.gather)
