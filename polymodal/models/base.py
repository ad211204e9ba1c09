"""The interface every embedding model offers: images and texts -> L2-normalised float32 vectors in one space."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from polymodal.apps.zeroshot import PromptCache, rank_labels
from polymodal.data.images import ImageTransform

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def _as_list(x: Any) -> list:
    if isinstance(x, (str, bytes)) or not isinstance(x, (list, tuple)):
        return [x]
    return list(x)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


class EmbeddingModel:
    """Subclasses set name, version, dim, transform, logit_scale and implement the two batch methods.

    _image_batch(pixels [B,3,H,W] float tensor) -> [B, dim] tensor
    _text_batch(list[str]) -> [B, dim] tensor
    """

    name: str = "model"
    version: str = "0"
    dim: int = 0
    transform: ImageTransform = ImageTransform()
    logit_scale: float = 100.0
    image_batch_size: int = 32
    text_batch_size: int = 64

    def __init__(self) -> None:
        self._prompts = PromptCache(self)

    # -- subclass hooks -------------------------------------------------------
    def _image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    # -- public API -----------------------------------------------------------
    @property
    def key(self) -> str:
        """Identifies the embedding space: vectors from different keys must never be mixed."""
        return f"{self.name}@{self.version}"

    @torch.inference_mode()
    def encode_image(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        """Paths, PIL images or numpy arrays -> float32 [N, dim], rows L2-normalised."""
        images = _as_list(images)
        bs = batch_size or self.image_batch_size
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(images), bs):
            pixels = torch.from_numpy(self.transform(images[i : i + bs]))
            out.append(l2_normalize(self._image_batch(pixels)).numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def encode_text(self, texts: Any, batch_size: int | None = None) -> np.ndarray:
        """Strings -> float32 [N, dim], rows L2-normalised."""
        texts = [str(t) for t in _as_list(texts)]
        bs = batch_size or self.text_batch_size
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(texts), bs):
            out.append(l2_normalize(self._text_batch(texts[i : i + bs])).numpy())
        return np.concatenate(out)

    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """[L, dim] prompt-ensemble embeddings, cached per (labels, templates)."""
        return self._prompts.get(labels, templates or DEFAULT_TEMPLATES)

    def classify(
        self, images: Any, labels: Sequence[str], templates: Sequence[str] | None = None, top_k: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """For each image, labels ranked by softmax(logit_scale * cosine), best first: [(label, score), ...]."""
        label_emb = self.label_embeddings(labels, templates)
        return rank_labels(self.encode_image(images), label_emb, list(labels), self.logit_scale, top_k)
