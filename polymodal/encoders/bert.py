"""BERT in plain torch, with transformers' BertModel parameter names, for the MiniLM text tower.

Why not transformers' BertModel: importing its modelling code costs about 2 s per process (every CLI call, every
server start) for six standard transformer layers. Same names mean the same checkpoints: the tower's
model.safetensors loads strictly, and a fine-tuned tower's saved layers keep their keys. tests/test_bert_encoder.py
holds it to BertModel's outputs on the real weights. Other architectures go through transformers (`supports`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
               "attention_probs_dropout_prob", "pad_token_id")


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, raw: dict) -> "BertConfig":
        return cls(**{k: raw[k] for k in CONFIG_KEYS if k in raw})


def supports(raw_config: dict) -> bool:
    """True for a config this module computes exactly as transformers does: a plain post-norm BERT."""
    return (raw_config.get("model_type") == "bert" and raw_config.get("hidden_act") == "gelu"
            and raw_config.get("position_embedding_type", "absolute") == "absolute"
            and not raw_config.get("is_decoder", False) and all(k in raw_config for k in CONFIG_KEYS[:-1]))


@dataclass
class BertOutput:
    last_hidden_state: Tensor  # [B, L, D]


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        return self.dropout(self.LayerNorm(x + self.token_type_embeddings(types)))


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads, self.dropout_p = c.num_attention_heads, c.attention_probs_dropout_prob
        self.query, self.key, self.value = (nn.Linear(c.hidden_size, c.hidden_size) for _ in range(3))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        return self.attend(x, keep)[0]

    def attend(self, x: Tensor, keep: Tensor | None, past: tuple[Tensor, Tensor] | None = None):
        """``x`` ``[B, L, D]`` attending over itself (under ``keep``) and over the earlier tokens whose keys and
        values are ``past`` -> (output ``[B, L, D]``, (keys, values) of past + x)."""
        b, length, d = x.shape
        q, k, v = (proj(x).view(b, length, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, length, d), (k, v)


class _Residual(nn.Module):
    """dense -> dropout -> LayerNorm(+ input): BERT's post-norm sublayer output (BertSelfOutput, BertOutput)."""

    def __init__(self, c: BertConfig, width_in: int):
        super().__init__()
        self.dense = nn.Linear(width_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Residual(c, c.hidden_size)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        return self.output(self.self(x, keep), x)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU, transformers' "gelu"


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Residual(c, c.intermediate_size)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)

    def extend(self, x: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """New tokens ``x`` ``[B, t, D]`` that see every earlier token (their keys and values in ``past``, or none)
        and each other, unmasked: left-to-right decoding one step at a time. Returns the new tokens' states and the
        keys and values so far."""
        attended, kv = self.attention.self.attend(x, None, past)
        x = self.attention.output(attended, x)
        return self.output(self.intermediate(x), x), kv


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):  # unused by mean pooling; kept so the checkpoint loads strictly
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> BertOutput:
        x = self.embeddings(input_ids, token_type_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        keep = mask.bool()[:, None, None, :]  # [B, 1, 1, L]: every query may look at the real tokens only
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return BertOutput(x)

    @classmethod
    def from_folder(cls, folder: Path, raw_config: dict) -> "BertModel":
        from safetensors.torch import load_file

        model = cls(BertConfig.from_dict(raw_config))
        state = load_file(str(folder / "model.safetensors"))
        state.pop("embeddings.position_ids", None)  # a buffer transformers saves; positions are computed here
        model.load_state_dict(state, strict=True)
        return model.eval()


def read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())
