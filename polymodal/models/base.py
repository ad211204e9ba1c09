"""The interface every embedding model offers: images and texts -> L2-normalised float32 vectors in one space."""

from __future__ import annotations


import numpy as np
import torch

from polymodal.apps.zeroshot import PromptCache
from polymodal.data.images import ImageTransform
from polymodal.models.inputs import as_pixels
from polymodal.models.interface import EmbeddingInterface
from polymodal.models.modes import check_float32, in_eval_mode


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


class EmbeddingModel(EmbeddingInterface):
    """Subclasses set name, version, dim, transform, logit_scale and implement the two batch methods.

    _image_batch(pixels [B,3,H,W] float tensor) -> [B, dim] tensor
    _text_batch(list[str]) -> [B, dim] tensor
    """

    transform: ImageTransform = ImageTransform()
    logit_scale: float = 100.0

    def __init__(self) -> None:
        self._prompts = PromptCache(self)

    def __repr__(self) -> str:  # (DualEncoder, a torch module, has its own: models/summary.py)
        return f"{type(self).__name__}({self.key}, dim={self.dim})"

    # -- subclass hooks -------------------------------------------------------
    def _image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    # -- public API -----------------------------------------------------------
    @in_eval_mode
    @torch.inference_mode()
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixels [B, 3, H, W] (self.transform's output) -> float32 [B, dim], rows L2-normalised."""
        check_float32(self, "model")
        return l2_normalize(self._image_batch(torch.from_numpy(as_pixels(pixels)))).numpy()

    @in_eval_mode
    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        check_float32(self, "model")
        return l2_normalize(self._text_batch(texts)).numpy()
