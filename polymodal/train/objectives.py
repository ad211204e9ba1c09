"""Training objectives: each turns a batch into a loss and metrics. The Trainer sums weighted objectives.

An objective implements `compute(model, batch) -> (loss, metrics)`; the default `backward` scales and
back-propagates it. Objectives that manage memory themselves (GradCache) override `backward`. Later
objectives (ITM, MLM, MRM, VQA) plug in the same way, each with its own data loader.
"""

from __future__ import annotations

import torch

from polymodal.losses import contrastive_loss
from polymodal.train.gradcache import gradcache_backward


class Objective:
    name = "objective"

    def compute(self, model, batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def samples(self, batch) -> int:
        """How many training samples ``batch`` holds (what samples/s counts): its first field's length."""
        return len(batch[0])

    def backward(self, model, batch, weight: float = 1.0) -> dict:
        loss, metrics = self.compute(model, batch)
        (weight * loss).backward()
        return {"loss": float(loss.detach()), **metrics}


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


class ContrastiveObjective(Objective):
    """Symmetric InfoNCE between images and captions (CLIP) with the model's learnable temperature.

    batch = (image inputs from the feature cache [B, ...], texts: pooled text features [B, 384] or list[str]
    [, negatives: M hard-negative captions in the same form, M >= 0]). Negatives join the image->text softmax as
    extra wrong answers (NegCLIP); they are embedded with the captions in one pass.
    With `gradcache_chunk`, the contrastive batch can exceed what fits in one forward/backward (GradCache).
    With `gather`, embeddings are gathered across torch.distributed ranks (global-batch loss)."""

    name = "contrastive"

    def __init__(self, gradcache_chunk: int | None = None, gather: bool = False) -> None:
        self.chunk, self.gather = gradcache_chunk, gather

    @staticmethod
    def _embed_image(model, x):
        return _normalize(model.image_from_cache(x))

    @staticmethod
    def _embed_text(model, t):
        return _normalize(model.text_from_pooled(t) if isinstance(t, torch.Tensor) else model._text_batch(list(t)))

    @staticmethod
    def _texts(batch):
        """(images, all texts to embed: captions then negatives, number of captions, whether negatives come)."""
        images, texts, *rest = batch
        negatives = rest[0] if rest else []
        if len(negatives) == 0:
            return images, texts, len(texts), bool(rest)
        joined = torch.cat([texts, negatives]) if isinstance(texts, torch.Tensor) else list(texts) + list(negatives)
        return images, joined, len(texts), True

    def _loss(self, model, image_emb, text_emb, n_captions: int, with_negatives: bool):
        # A batch with a negatives slot passes them even when there are none ([0, D]): under torchrun every rank
        # must join the negatives' gather, whatever its own count.
        return contrastive_loss(image_emb, text_emb[:n_captions], model.logit_scale_tensor, gather=self.gather,
                                negative_text_emb=text_emb[n_captions:] if with_negatives else None)

    def compute(self, model, batch):
        images, texts, *split = self._texts(batch)
        out = self._loss(model, self._embed_image(model, images), self._embed_text(model, texts), *split)
        return out.loss, {"acc_i2t": out.accuracy_i2t, "acc_t2i": out.accuracy_t2i}

    def backward(self, model, batch, weight: float = 1.0) -> dict:
        if not self.chunk:
            return super().backward(model, batch, weight)
        images, texts, *split = self._texts(batch)
        seen = {}

        def loss_fn(img, txt):  # runs once, over the whole batch's cached embeddings
            seen["out"] = self._loss(model, img, txt, *split)
            return weight * seen["out"].loss

        gradcache_backward(lambda x: self._embed_image(model, x), lambda t: self._embed_text(model, t),
                           images, texts, loss_fn, self.chunk)
        out = seen["out"]  # unweighted, with the accuracies the plain path reports too (weight 0 divides nothing)
        return {"loss": float(out.loss.detach()), "acc_i2t": out.accuracy_i2t, "acc_t2i": out.accuracy_t2i}
