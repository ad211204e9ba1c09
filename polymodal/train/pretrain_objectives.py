"""Fusion-encoder pretraining objectives: image-text matching (ITM), masked language modelling conditioned on the
image (MLM) and masked region modelling conditioned on the text (MRM), as pure loss functions plus `Objective`s
for the `Trainer` (alone or weighted together: ``{"itm": (ITMObjective(), 1.0, loader), ...}``).

A batch is a `PretrainBatch` built by `polymodal.train.pretrain` from the feature cache: R caption rows over I
images (each image's grid projected once per step). What each objective reads from it:

- ITM: ``itm_labels`` (1 = the caption describes the image, 0 = a mined hard or random negative pair);
- MLM: ``states`` are the token states of the MASKED sentences (the words were replaced by [MASK] at the text
  tower's input, so no state carries the hidden word) and ``mlm_targets`` holds the original word-piece ids at
  the masked positions (-100 elsewhere);
- MRM: ``region_mask`` marks the grid cells whose projected token the model replaces by its mask embedding;
  the targets are computed from the (unmasked) cached features by `FusionEncoder.mrm_targets`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from polymodal.train.objectives import Objective

IGNORE = -100  # mlm_targets value of positions that are not predicted


class PretrainBatch(NamedTuple):
    """R rows over I images. ``row_image`` comes first so ``len(batch[0])`` is the number of rows."""

    row_image: torch.Tensor  # [R] index into images
    images: torch.Tensor  # [I, T, F] cached image grid inputs
    states: torch.Tensor  # [R, L, 384] caption token states (of the masked sentence for MLM)
    mask: torch.Tensor  # [R, L] bool, True = real token
    itm_labels: torch.Tensor | None = None  # [R] float, 1 = matching pair
    mlm_targets: torch.Tensor | None = None  # [R, L] int64 original word-piece id at masked positions, else -100
    region_mask: torch.Tensor | None = None  # [R, T] bool, True = masked grid cell


# -- pure losses ------------------------------------------------------------------------------------------------------


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of match logits ``[R]`` against labels ``[R]`` (1 = match), mean over rows."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of masked-word logits ``[M, V]`` against the original word-piece ids ``[M]``."""
    return F.cross_entropy(logits.float(), targets)


def mrm_regression_loss(pred: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predictions ``[M, F]`` and the masked cells' features ``[M, F]``, each cell's
    feature normalised to zero mean and unit variance first (as MAE normalises its pixel targets): the scale
    of the tower's activations does not set the loss."""
    target = F.layer_norm(features.float(), features.shape[-1:])
    return F.mse_loss(pred.float(), target)


def mrm_classification_loss(pred_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(target || prediction) between the class distribution the tower's classifier gives each masked cell
    (``target_logits`` ``[M, C]``) and the predicted one (``pred_logits`` ``[M, C]``), mean over cells
    (UNITER's MRC-kl)."""
    target = F.log_softmax(target_logits.float(), dim=-1)
    pred = F.log_softmax(pred_logits.float(), dim=-1)
    return F.kl_div(pred, target, reduction="batchmean", log_target=True)


# -- objectives -------------------------------------------------------------------------------------------------------


class ITMObjective(Objective):
    """Binary cross-entropy of the ITM head on matching pairs and (hard) negative pairs."""

    name = "itm"

    def samples(self, batch: PretrainBatch) -> int:
        """The batch's captions (its matching rows), as MLM and MRM batches count them: each caption brings two
        negative rows, which are not samples of their own."""
        return int(batch.itm_labels.sum())

    def compute(self, model, batch: PretrainBatch) -> tuple[torch.Tensor, dict]:
        logits = model.itm_logits(batch.images, batch.states, batch.mask, batch.row_image)
        loss = itm_loss(logits, batch.itm_labels)
        correct = ((logits > 0).float() == batch.itm_labels).float()
        positive = batch.itm_labels > 0.5
        # two negatives a caption: "never a match" scores 2/3 accuracy; balanced accuracy (the mean of the
        # positives' and the negatives' accuracy) is 0.5 for it and for chance
        balanced = (correct[positive].mean() + correct[~positive].mean()) / 2
        return loss, {"itm_loss": float(loss.detach()), "itm_accuracy": float(correct.mean()),
                      "itm_balanced_accuracy": float(balanced)}


class MLMObjective(Objective):
    """Cross-entropy over MiniLM's vocabulary at the masked positions, the fusion seeing the whole image."""

    name = "mlm"

    def compute(self, model, batch: PretrainBatch) -> tuple[torch.Tensor, dict]:
        positions = batch.mlm_targets != IGNORE
        logits = model.mlm_logits(batch.images, batch.states, batch.mask, positions, batch.row_image)
        targets = batch.mlm_targets[positions]
        if not len(targets):  # no maskable word in the batch (punctuation-only captions): nothing to learn
            return logits.sum() * 0.0, {"mlm_loss": 0.0, "mlm_accuracy": 0.0}
        loss = mlm_loss(logits, targets)
        accuracy = float((logits.argmax(-1) == targets).float().mean())
        return loss, {"mlm_loss": float(loss.detach()), "mlm_accuracy": accuracy}


class MRMObjective(Objective):
    """Regress (or classify) the masked grid cells from the fused image tokens, the fusion seeing the caption."""

    name = "mrm"

    def compute(self, model, batch: PretrainBatch) -> tuple[torch.Tensor, dict]:
        pred = model.mrm_predictions(batch.images, batch.states, batch.mask, batch.region_mask, batch.row_image)
        target = model.mrm_targets(batch.images, batch.region_mask, batch.row_image)
        if model.config.mrm_head == "classify":
            loss = mrm_classification_loss(pred, target)
            agree = float((pred.argmax(-1) == target.argmax(-1)).float().mean())
            return loss, {"mrm_loss": float(loss.detach()), "mrm_top1_agreement": agree}
        loss = mrm_regression_loss(pred, target)
        return loss, {"mrm_loss": float(loss.detach())}


OBJECTIVES = {"itm": ITMObjective, "mlm": MLMObjective, "mrm": MRMObjective}
