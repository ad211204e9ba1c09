"""CLIP's symmetric InfoNCE loss, a learnable temperature, and feature gathering across ranks.

Pure function `contrastive_loss` plus thin modules `LearnableTemperature` and `ClipLoss`, as TorchMultimodal's
contrastive_loss_with_temperature and open_clip's ClipLoss (gather_with_grad=True, local_loss=False) do.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from numbers import Real

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)

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


def _gather(*tensors: Tensor) -> list[Tensor]:
    """all_gather each tensor along dim 0 (with gradients where they need them), after one shape check."""
    # all_gather needs equal shapes on every rank; checking first turns a hang or a cryptic backend error into
    # one clear message, raised on every rank alike since every rank sees all shapes.
    dims = [(t.shape[0], t.shape[1] if t.ndim > 1 else 0) for t in tensors]
    shape = torch.tensor([[d for pair in dims for d in pair]], device=tensors[0].device)  # [1, 2k]
    shapes = shape.new_empty((dist.get_world_size(), shape.shape[1]))
    _all_gather(shapes, shape)
    if not bool((shapes == shape).all()):  # same verdict on every rank
        raise PolymodalError(
            f"contrastive_loss(gather=True) needs the same [B, D] on every rank, got {shapes.tolist()}; "
            "use DistributedSampler with drop_last=True and a DataLoader with drop_last=True"
        )
    out = []
    for t in tensors:
        if t.requires_grad:
            out.append(_GatherWithGrad.apply(t))
        else:
            full = t.new_empty((dist.get_world_size() * t.shape[0], *t.shape[1:]))
            _all_gather(full, t.contiguous())
            out.append(full)
    return out


def _gather_ragged(x: Tensor) -> Tensor:
    """all_gather [M_rank, D] rows whose count differs across ranks (hard negatives): pad to the largest count,
    gather (with gradients where needed), drop the padding."""
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = count.new_empty(dist.get_world_size())
    _all_gather(counts, count)
    most = int(counts.max())
    padded = F.pad(x, (0, 0, 0, most - x.shape[0]))
    if padded.requires_grad:
        full = _GatherWithGrad.apply(padded)
    else:
        full = padded.new_empty((dist.get_world_size() * most, *padded.shape[1:]))
        _all_gather(full, padded.contiguous())
    keep = (torch.arange(most, device=x.device)[None, :] < counts[:, None]).reshape(-1)
    return full[keep]


def contrastive_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor | float,
    *,
    gather: bool = False,
    negative_text_emb: Tensor | None = None,
    image_ids: Tensor | None = None,
) -> ContrastiveOutput:
    """Symmetric InfoNCE (CLIP): pair i of `image_emb` [B, D] matches pair i of `text_emb` [B, D].

    Callers L2-normalise the embeddings (the loss uses plain dot products, so unnormalised inputs silently change
    the effective temperature). `logit_scale` is the multiplier already exponentiated, e.g. LearnableTemperature().

    negative_text_emb [M, D]: hard-negative texts that match no image in the batch (NegCLIP: a caption with its
    words swapped); M may be 0, and may differ between ranks under gather. They join the image->text softmax as extra wrong answers; text->image is over the pairs only,
    and `accuracy_i2t` counts an image whose best text is a negative as a miss.

    image_ids [B] (integers): rows with the same id show the same image (several captions of one photo in one
    batch). Each image's targets are then all texts of its id, equally weighted (soft-target cross-entropy, as
    UniCL does), and vice versa, instead of counting a batch mate's caption of the same photo as a wrong answer.
    Without ids every row is its own image, exactly CLIP's loss.

    gather=True with torch.distributed initialised and world size > 1: embeddings (and negatives and ids) from all
    ranks are gathered with gradients and every rank computes the same loss over the global batch
    N = world_size * B. The gather's backward sums every rank's gradient, so each rank's local gradient is
    world_size times its share; DDP's gradient averaging divides that by world_size, which leaves exactly the
    single-process gradient on the global batch. Without DDP (or another mean all-reduce of gradients), divide by
    world_size yourself. Parameters used after the gather (a learnable temperature) get the same, already global,
    gradient on every rank. Ids must mean the same image on every rank (e.g. dataset indices).
    """
    _check_inputs(image_emb, text_emb, logit_scale, negative_text_emb, image_ids)
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        image_emb, text_emb, *ids = _gather(image_emb, text_emb, *([image_ids] if image_ids is not None else []))
        image_ids = ids[0] if ids else None
        if negative_text_emb is not None:  # every rank must pass negatives (maybe [0, D]) or none
            negative_text_emb = _gather_ragged(negative_text_emb)

    logits_per_image = logit_scale * image_emb @ text_emb.T  # [N, N]
    n = logits_per_image.shape[0]
    if image_ids is None:
        positive = torch.eye(n, dtype=torch.bool, device=logits_per_image.device)
        targets = torch.arange(n, device=logits_per_image.device)  # index targets: CLIP's loss bit for bit
        targets_i2t = targets_t2i = targets
    else:
        positive = image_ids[:, None] == image_ids[None, :]  # [N, N], symmetric
        targets_i2t = targets_t2i = positive.to(logits_per_image.dtype) / positive.sum(1, keepdim=True)
    i2t = logits_per_image
    if negative_text_emb is not None:
        i2t = torch.cat([logits_per_image, logit_scale * image_emb @ negative_text_emb.T], dim=1)  # [N, N + M]
        if image_ids is not None:
            targets_i2t = F.pad(targets_i2t, (0, i2t.shape[1] - n))
    loss = (F.cross_entropy(i2t, targets_i2t) + F.cross_entropy(logits_per_image.T, targets_t2i)) / 2
    with torch.no_grad():
        rows = torch.arange(n, device=logits_per_image.device)
        best_text, best_image = i2t.argmax(dim=1), logits_per_image.argmax(dim=0)
        acc_i2t = (best_text < n).logical_and(positive[rows, best_text.clamp(max=n - 1)]).float().mean().item()
        acc_t2i = positive[best_image, rows].float().mean().item()
    return ContrastiveOutput(loss, logits_per_image, acc_i2t, acc_t2i)


def _check_inputs(image_emb, text_emb, logit_scale, negative_text_emb, image_ids) -> None:
    for what, x in (("image_emb", image_emb), ("text_emb", text_emb), ("negative_text_emb", negative_text_emb),
                    ("image_ids", image_ids)):
        if x is not None and not isinstance(x, Tensor):
            raise PolymodalError(f"contrastive_loss: {what} must be a torch tensor, got {type(x).__name__} "
                                 "(torch.as_tensor turns arrays and lists into one)")
    if isinstance(logit_scale, torch.nn.Module):
        raise PolymodalError("contrastive_loss: logit_scale is a module; pass its value, e.g. temperature()")
    _check_logit_scale(logit_scale)
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
    if negative_text_emb is not None and (negative_text_emb.ndim != 2 or negative_text_emb.shape[1] !=
                                          text_emb.shape[1] or negative_text_emb.dtype != text_emb.dtype):
        raise PolymodalError(
            f"contrastive_loss: negative_text_emb must be [M, {text_emb.shape[1]}] {text_emb.dtype} like text_emb, "
            f"got {tuple(negative_text_emb.shape)} {negative_text_emb.dtype}; embed the negatives with the text tower"
        )
    if image_ids is not None and (image_ids.shape != (image_emb.shape[0],) or image_ids.is_floating_point()
                                  or image_ids.is_complex()):
        raise PolymodalError(
            f"contrastive_loss: image_ids must be {image_emb.shape[0]} integers, one per row, got "
            f"{tuple(image_ids.shape)} {image_ids.dtype}; e.g. torch.tensor([0, 0, 1]) for two captions of one photo"
        )


_warned_of_small_scale = False


def _check_logit_scale(logit_scale) -> None:
    """A positive finite scalar; one below 1 is most likely a temperature passed where its inverse belongs (open_clip
    takes logit_scale, TorchMultimodal a temperature): it flattens the softmax and trains almost nothing."""
    global _warned_of_small_scale
    if isinstance(logit_scale, Tensor):
        if logit_scale.numel() != 1:
            raise PolymodalError(f"contrastive_loss: logit_scale must be one number, got a tensor of shape "
                                 f"{tuple(logit_scale.shape)}; pass a scalar such as LearnableTemperature()()")
        if logit_scale.device.type != "cpu":  # reading the value would sync the device every step
            return
        value = float(logit_scale.detach())
        if not math.isfinite(value):  # a diverged learnable scale: the NaN loss is the trainer's to report
            return
    elif isinstance(logit_scale, Real) and not isinstance(logit_scale, bool):
        value = float(logit_scale)
    else:
        raise PolymodalError(f"contrastive_loss: logit_scale must be a number or a scalar tensor, got "
                             f"{type(logit_scale).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise PolymodalError(f"contrastive_loss: logit_scale is {value}; it must be a positive finite multiplier, "
                             f"e.g. 1 / 0.07 = {1 / DEFAULT_TEMPERATURE:.1f}")
    if value < 1 and not _warned_of_small_scale:
        _warned_of_small_scale = True
        log.warning("contrastive_loss: logit_scale %.3g is below 1, which looks like a temperature; the loss takes "
                    "its inverse (1 / %.3g = %.3g), or LearnableTemperature()()", value, value, 1 / value)


class LearnableTemperature(nn.Module):
    """Learnable logit scale: a parameter log_scale = log(1 / temperature); forward() returns exp(log_scale) <= 100.

    The output is clamped on the way out (TorchMultimodal's choice), so the loss never sees a scale above
    `max_scale` whatever the optimiser does. While clamped the parameter gets no gradient, so if weight decay or
    momentum pushed it past the limit it could not come back on its own; call `clamp_()` after optimizer.step(),
    as CLIP's training loop does, to pin the parameter itself at the limit.
    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, max_scale: float = MAX_LOGIT_SCALE):
        super().__init__()
        if not isinstance(temperature, Real) or isinstance(temperature, bool):  # e.g. "0.07" read from a config
            raise PolymodalError(f"temperature must be a number such as 0.07, got {temperature!r} "
                                 f"({type(temperature).__name__})")
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

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        logit_scale: Tensor | None = None,
        *,
        negative_text_emb: Tensor | None = None,
        image_ids: Tensor | None = None,
    ) -> ContrastiveOutput:
        """image_emb, text_emb: [B, D], L2-normalised; negatives and ids as in `contrastive_loss`."""
        scale = self.temperature() if logit_scale is None else logit_scale
        return contrastive_loss(image_emb, text_emb, scale, gather=self.gather, negative_text_emb=negative_text_emb,
                                image_ids=image_ids)
