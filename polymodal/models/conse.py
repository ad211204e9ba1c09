"""`lite`: a joint image-text space without paired training (ConSE, Norouzi et al. 2014).

The image tower is an ImageNet classifier. An image's embedding is the probability-weighted mean of the
text embeddings of its top-k class prompts, so images land in the sentence encoder's space and can be
compared with any text.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from polymodal.cache import cache_dir, mark_used, store_cached
from polymodal.encoders.efficientnet import LITE0_TRANSFORM, EfficientNetLite0
from polymodal.encoders.text import SentenceEncoder, minilm_path
from polymodal.errors import PolymodalError
from polymodal.models.base import EmbeddingModel
from polymodal.models.inputs import check_count
from polymodal.resources import imagenet_classes

log = logging.getLogger(__name__)

CLASS_TEMPLATE = "a photo of a {}"
MODEL_VERSION = "1"


def conse_embedding(logits: torch.Tensor, class_matrix: torch.Tensor, top_k: int = 10) -> torch.Tensor:
    """ImageNet logits [B, 1000] -> sum over the top-k classes of p(class) * class prompt embedding: [B, D]."""
    top_p, top_i = logits.softmax(dim=-1).topk(top_k, dim=-1)  # [B, k]
    return torch.einsum("bk,bkd->bd", top_p, class_matrix[top_i])


def class_prompt_matrix(text_tower) -> np.ndarray:
    """Normalised embeddings of 'a photo of a {class}' for the 1000 classes [1000, D]; computed once, cached on disk."""
    names = imagenet_classes()
    key = hashlib.sha256("\n".join([MODEL_VERSION, CLASS_TEMPLATE, *names]).encode()).hexdigest()[:16]
    path = cache_dir() / f"conse-classes-{key}.npy"
    if path.is_file():
        try:
            matrix = np.load(path)
            if matrix.shape == (len(names), text_tower.dim):
                mark_used(path)  # (`polymodal cache clear --older-than` goes by last use)
                return matrix
        except (OSError, ValueError, EOFError):  # EOFError: an empty file
            log.warning("class prompt cache %s is unreadable; recomputing", path)
    log.info("computing %d class prompt embeddings (once; cached at %s)", len(names), path)
    prompts = [CLASS_TEMPLATE.format(c) for c in names]
    with torch.inference_mode():
        matrix = torch.cat([text_tower(prompts[i : i + 64]) for i in range(0, len(prompts), 64)])
    matrix = torch.nn.functional.normalize(matrix, dim=-1).numpy()
    store_cached(path, matrix)  # a read-only cache: computed again next time, with a warning
    return matrix


class ConSEModel(EmbeddingModel):
    """The built-in ``lite`` model: an image embeds as the MiniLM embeddings of its ``top_k`` ImageNet classes
    weighted by EfficientNet-Lite0's probabilities (ConSE), a text as its MiniLM embedding. ``encode_image`` /
    ``encode_text`` -> float32 numpy ``[N, 384]``, rows L2-normalised; ``classify`` -> ``[[(label, score), ...]]``."""

    name = "lite"
    transform = LITE0_TRANSFORM
    logit_scale = 50.0  # MiniLM cosines spread less than CLIP's; 50 gives usable softmax scores

    def __init__(self, top_k: int = 10) -> None:
        top_k = check_count(top_k, "top_k")  # 0 would embed every image as a zero vector; -1 or 2.5 fail later
        n_classes = len(imagenet_classes())
        if top_k > n_classes:
            raise PolymodalError(f"top_k must be at most {n_classes} (the ImageNet classes ConSE mixes), got {top_k}")
        super().__init__()
        self.top_k = top_k
        self.version = f"{MODEL_VERSION}-k{top_k}"
        self.text_tower = SentenceEncoder(minilm_path())
        self.image_tower = EfficientNetLite0()
        self.dim = self.text_tower.dim
        self.class_names = imagenet_classes()
        self.class_matrix = torch.from_numpy(class_prompt_matrix(self.text_tower))  # [1000, D], rows normalised

    def _image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return conse_embedding(self.image_tower(pixels), self.class_matrix, self.top_k)

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.text_tower(texts)

    # what polymodal.export turns into the text graph
    def text_from_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_tower.pool(input_ids, attention_mask)

    @property
    def text_tokenizer(self):
        return self.text_tower.tokenizer, self.text_tower.max_length
