"""The VQA objective: cross-entropy over the answer vocabulary (plus, optionally, image-text matching).

A batch is a `VQABatch` built by `polymodal.train.vqa` from the feature cache: whole images with all their
questions, so each image is projected once per step however many questions it has.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from polymodal.train.objectives import Objective


class VQABatch(NamedTuple):
    """R question rows over I images. ``targets`` comes first so ``len(batch[0])`` is the number of rows."""

    targets: torch.Tensor  # [R] answer indices; -1 = outside the vocabulary (the row trains through ITM alone)
    row_image: torch.Tensor  # [R] index into images
    images: torch.Tensor  # [I, T, F] cached image inputs
    states: torch.Tensor  # [R, L, 384] question token states
    mask: torch.Tensor  # [R, L] bool, True = real token
    # image-text matching (present when the recipe trains an ITM head): 2R texts "question answer", half matching
    itm_states: torch.Tensor | None = None  # [2R, L2, 384]
    itm_mask: torch.Tensor | None = None  # [2R, L2]
    itm_labels: torch.Tensor | None = None  # [2R] float 1 = the true answer, 0 = another answer
    itm_row_image: torch.Tensor | None = None  # [2R]


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of answer logits ``[R, A]`` against answer indices ``[R]``."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


class VQAObjective(Objective):
    """Cross-entropy over answers; with ``itm_weight`` > 0 and a batch carrying ITM texts, adds
    ``itm_weight`` x binary cross-entropy of the ITM head (true answer vs a sampled wrong one)."""

    name = "vqa"

    def __init__(self, label_smoothing: float = 0.0, itm_weight: float = 0.0) -> None:
        self.label_smoothing, self.itm_weight = label_smoothing, itm_weight

    def compute(self, model, batch: VQABatch) -> tuple[torch.Tensor, dict]:
        known = batch.targets >= 0  # rows outside the vocabulary come only with ITM texts, and train through them
        targets = batch.targets[known]
        loss, metrics = batch.images.new_zeros(()), {}  # no row for the VQA head: no vqa_loss to report
        if len(targets):
            rows = (slice(None),) if known.all() else (known,)
            logits = model.vqa_logits(batch.images, batch.states[rows], batch.mask[rows], batch.row_image[rows])
            loss = vqa_loss(logits, targets, self.label_smoothing)
            metrics = {"vqa_loss": float(loss.detach()), "accuracy": float((logits.argmax(-1) == targets).float().mean())}
        if self.itm_weight and batch.itm_states is not None:
            itm = model.itm_logits(batch.images, batch.itm_states, batch.itm_mask, batch.itm_row_image)
            itm_loss = F.binary_cross_entropy_with_logits(itm.float(), batch.itm_labels)
            loss = loss + self.itm_weight * itm_loss
            metrics.update(itm_loss=float(itm_loss.detach()),
                           itm_accuracy=float(((itm > 0).float() == batch.itm_labels).float().mean()))
        return loss, metrics
