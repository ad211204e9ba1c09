"""Captioner: generates a caption for a photo with the pretrained towers (VLP/UniLM-style prefix language model).

    image -> EfficientNet-Lite0 7x7 grid [49, 1280] (frozen; what the training cache stores)
          -> prefix: the grid's mean + the grid average-pooled to prefix_grid x prefix_grid
          -> LayerNorm + Linear to 384 (+ a learned position per prefix token) -> [1 + p*p, 384]
    text  -> MiniLM's word-piece embeddings ([CLS] w1 .. wn)
    [prefix ; text] -> MiniLM's six layers with a prefix-LM mask: prefix tokens see the prefix only; a word sees the
          whole prefix and the words before it -> the next word: Linear+GELU+LayerNorm -> logits over MiniLM's
          vocabulary, tied to its word-embedding matrix (plus a trained bias). [SEP] ends the caption.

MiniLM stays frozen; low-rank adapters (`polymodal.models.lora`) on every Linear of its layers, their LayerNorms,
the prefix projection and the output transform are trained: about 1.4M parameters, a few MB saved. A bidirectional
sentence encoder becomes a left-to-right decoder through the mask and the adapters, and keeps its word knowledge.
Captions come out lower case (MiniLM's vocabulary is uncased). Decoding is beam search with a length penalty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.data.images import ImageTransform
from polymodal.encoders.efficientnet import grid_transform
from polymodal.errors import PolymodalError
from polymodal.models.beam_search import (MAX_TOKENS, NO_REPEAT, beam_search, caption_batches, caption_text,
                                          check_search)
from polymodal.models.folders import config_from_dict, folder_type, read_folder_config, settings_from
from polymodal.models.inputs import as_images, check_count, check_fraction
from polymodal.models.modes import check_float32, in_eval_mode
from polymodal.models.summary import image_tower, summary

IMAGE_DIM = 1280


@dataclass
class CaptionerConfig:
    name: str = "captioner"
    prefix_grid: int = 3  # the 7x7 grid pooled to 3x3 (+ its mean): 10 prefix tokens
    lora_rank: int = 16
    lora_alpha: float = 32.0
    dropout: float = 0.1
    max_caption_tokens: int = 32  # longer training captions are cut (word pieces, with [CLS] and [SEP])
    image_size: int = 224

    @classmethod
    def from_dict(cls, d: dict) -> "CaptionerConfig":
        return config_from_dict(cls, d, "captioner")

    def validate(self) -> None:
        for key in ("prefix_grid", "lora_rank", "max_caption_tokens", "image_size"):
            if isinstance(getattr(self, key), bool) or not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise PolymodalError(f"{key} must be a positive int, got {getattr(self, key)!r}")
        if self.max_caption_tokens < 3:  # [CLS] and [SEP] take two: every caption would train as empty
            raise PolymodalError(f"max_caption_tokens must be at least 3 ([CLS], a word, [SEP]), got "
                                 f"{self.max_caption_tokens}; pass --max-caption-tokens 32 or so "
                                 "(max_caption_tokens in Python)")
        if self.max_caption_tokens > MAX_TOKENS:
            raise PolymodalError(f"max_caption_tokens must be at most {MAX_TOKENS} (the text tower's positions), "
                                 f"got {self.max_caption_tokens}")
        check_fraction(self.dropout, "dropout")
        if (isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float))
                or not 0 < self.lora_alpha < float("inf")):  # also refuses nan: the adapters' scale alpha / rank
            raise PolymodalError(f"lora_alpha must be a finite number above 0, got {self.lora_alpha!r}")
        if self.image_size % 32:
            raise PolymodalError(f"image_size must be a multiple of 32 (the tower's stride), got {self.image_size}")
        if self.prefix_grid > self.image_size // 32:
            raise PolymodalError(f"prefix_grid {self.prefix_grid} is finer than the image grid ({self.image_size // 32})")

    @property
    def transform(self) -> ImageTransform:
        return grid_transform(self.image_size)  # the fusion encoder's: image_cache_signature shares its grid cache


class Captioner(nn.Module):
    """Writes captions: ``caption(images)`` -> a list of strings, one per image (lower case).

    As a module: image grid features ``[B, 49, 1280]`` + caption word pieces ``[B, L]`` -> next-word logits
    ``[B, L, V]``."""

    def __init__(self, config: CaptionerConfig, version: str = "untrained") -> None:
        super().__init__()
        from polymodal.encoders.efficientnet import EfficientNetLite0
        from polymodal.encoders.text import SentenceEncoder, minilm_path
        from polymodal.models.lora import add_lora

        config.validate()
        self.config, self.version, self.name = config, version, config.name
        self.transform = config.transform
        self.image_tower = EfficientNetLite0().requires_grad_(False)
        text = SentenceEncoder(minilm_path(), max_length=config.max_caption_tokens)
        self._text = [text]  # the tokenizer; not a submodule: its BERT is self.decoder
        self.decoder = text.model.requires_grad_(False)
        add_lora(self.decoder.encoder.layer, config.lora_rank, config.lora_alpha)
        for name, p in self.decoder.encoder.named_parameters():
            if "LayerNorm" in name:
                p.requires_grad_(True)
        d = self.decoder.config.hidden_size
        self.prefix_proj = nn.Sequential(nn.LayerNorm(IMAGE_DIM), nn.Linear(IMAGE_DIM, d), nn.Dropout(config.dropout))
        self.prefix_pos = nn.Parameter(0.02 * torch.randn(1 + config.prefix_grid**2, d))
        self.prefix_norm = nn.LayerNorm(d)
        # the mean + the grid average-pooled to prefix_grid x prefix_grid, as one [cells, 1 + p*p] matrix (exact, and
        # an ONNX MatMul: adaptive pooling 7 -> 3 has no ONNX operator)
        g = config.image_size // 32
        cells = torch.eye(g * g).reshape(g * g, 1, g, g)
        pooling = torch.cat([torch.full((g * g, 1), 1.0 / (g * g)),
                             F.adaptive_avg_pool2d(cells, config.prefix_grid).flatten(1)], 1)
        self.register_buffer("pooling", pooling, persistent=False)
        self.lm_transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.lm_bias = nn.Parameter(torch.zeros(self.decoder.config.vocab_size))
        self._trained = {n for n, p in self.named_parameters() if p.requires_grad}

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def __repr__(self) -> str:  # what it is, not nn.Module's layer tree (models/summary.py)
        c = self.config
        return summary(self, "writes captions", [
            ("towers", f"{image_tower(self)} grid -> {1 + c.prefix_grid ** 2} prefix tokens, MiniLM-L6 decoder with "
                       f"LoRA rank {c.lora_rank}")])

    def train(self, mode: bool = True):
        super().train(mode)
        self.image_tower.eval()  # frozen towers keep eval-mode batch norm and no dropout
        self.decoder.embeddings.eval()
        return self

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def image_cache_signature(self) -> str:
        return f"lite0|grid|pixels0|{self.transform.to_dict()}"  # the fusion encoder's grid cache, shared

    @torch.no_grad()
    def image_cache_input(self, pixels: Tensor) -> Tensor:
        """Normalised pixels ``[B, 3, S, S]`` -> the tower's grid features ``[B, g*g, 1280]``."""
        return self.image_tower.spatial(pixels).float().flatten(2).transpose(1, 2).contiguous()

    def encode_images(self, images: Any, batch_size: int = 32) -> Tensor:
        images, batch_size = as_images(images), check_count(batch_size, "batch_size")
        out = [self.image_cache_input(torch.from_numpy(self.transform(list(images[i : i + batch_size]))))
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, (self.config.image_size // 32) ** 2, IMAGE_DIM)

    def tokenize(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Captions -> word pieces ``[B, L]`` ([CLS] ... [SEP], padded) and their mask (True = real)."""
        batch = self._text[0].tokenize(captions)
        return batch["input_ids"], batch["attention_mask"].bool()

    # -- the model ------------------------------------------------------------------------------
    def prefix(self, grid: Tensor) -> Tensor:
        """Grid features ``[B, g*g, 1280]`` -> prefix tokens ``[B, 1 + p*p, 384]``."""
        tokens = torch.einsum("cp,bcf->bpf", self.pooling, grid.float())
        return self.prefix_norm(self.prefix_proj(tokens) + self.prefix_pos)

    def hidden(self, prefix: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Prefix ``[B, P, D]`` + word pieces ``[B, L]`` (mask True = real) -> the words' states ``[B, L, D]``."""
        n, length = prefix.shape[1], ids.shape[1]
        x = torch.cat([prefix, self.decoder.embeddings(ids, None)], 1)
        sees = torch.zeros(n + length, n + length, dtype=torch.bool, device=ids.device)
        sees[:, :n] = True  # everyone sees the image; the image sees only itself
        sees[n:, n:] = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        real = torch.cat([mask.new_ones(ids.shape[0], n), mask.bool()], 1)
        keep = sees[None, None] & real[:, None, None, :]
        keep = keep | torch.eye(n + length, dtype=torch.bool, device=ids.device)  # a padding row sees itself
        for layer in self.decoder.encoder.layer:
            x = layer(x, keep)
        return x[:, n:]

    def logits(self, states: Tensor) -> Tensor:
        # F.linear, not @ weight.t(): ONNX export would store the transposed copy of the tied matrix (47 MB)
        return F.linear(self.lm_transform(states), self.decoder.embeddings.word_embeddings.weight, self.lm_bias)

    def loss(self, grid: Tensor, ids: Tensor, mask: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Mean next-word cross-entropy of the captions ``ids`` ``[B, L]`` given their photos' grids ``[B, 49, 1280]``."""
        states = self.hidden(self.prefix(grid), ids[:, :-1], mask[:, :-1])
        targets = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)
        logits = self.logits(states)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100,
                               label_smoothing=label_smoothing)

    # -- decoding -------------------------------------------------------------------------------
    def past_of(self, prefix: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Prefix tokens ``[N, P, D]`` -> each decoder layer's keys and values for them (the photo sees itself only,
        so they never change while words are added)."""
        x, past = prefix, []
        for layer in self.decoder.encoder.layer:
            x, kv = layer.extend(x, None)
            past.append(kv)
        return past

    def extend(self, ids: Tensor, position: Tensor, past: list[tuple[Tensor, Tensor]]):
        """One word piece per row ``[N, 1]`` at caption position ``position`` (``[1]``, [CLS] is 0), after the
        keys and values ``past`` -> (next-piece logits ``[N, V]``, the keys and values with this piece). The ONNX
        step graph is this function."""
        e = self.decoder.embeddings
        x = e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings(position) + e.token_type_embeddings.weight[0])
        grown = []
        for layer, kv in zip(self.decoder.encoder.layer, past):
            x, kv = layer.extend(x, kv)
            grown.append(kv)
        return self.logits(x[:, -1]), grown

    @torch.no_grad()
    def generate(self, grid: Tensor, beam: int = 3, max_tokens: int = 20, length_penalty: float = 1.0,
                 use_cache: bool = True, no_repeat: int = NO_REPEAT) -> list[list[int]]:
        """Beam search (`polymodal.models.beam_search`): the word pieces of the best caption per image. With
        use_cache, keys and values of the prefix and of the words so far are kept per layer (earlier tokens never
        see later ones under the prefix-LM mask, so their states do not change), so each step runs the new word
        only (3.4x faster at beam 3, benchmarks/caption_speed.py; the same captions); without, [prefix ; words] is
        rerun every step. no_repeat: see beam_search."""
        check_search(beam, max_tokens, length_penalty, no_repeat)  # before the prefix is repeated beam times
        prefix = self.prefix(grid).repeat_interleave(beam, 0)  # [B*k, P, D]
        past = self.past_of(prefix) if use_cache else []

        def step(ids: np.ndarray, origin: np.ndarray) -> np.ndarray:
            ids = torch.from_numpy(ids)
            if not use_cache:
                return self.logits(self.hidden(prefix, ids, torch.ones_like(ids, dtype=torch.bool))[:, -1]).numpy()
            rows = torch.from_numpy(origin)
            logits, past[:] = self.extend(ids[:, -1:], torch.tensor([ids.shape[1] - 1]),
                                          [(k[rows], v[rows]) for k, v in past])
            return logits.numpy()

        return beam_search(step, grid.shape[0], beam, max_tokens, length_penalty, no_repeat)

    @in_eval_mode
    def caption(self, images: Any, beam: int = 3, max_tokens: int = 20, batch_size: int = 16,
                no_repeat: int = NO_REPEAT) -> list[str]:
        """An image or images (paths, bytes, file objects, PIL images, arrays, tensors) -> one caption each
        (no_repeat: see generate)."""
        check_float32(self, "captioner")

        def pieces_of(batch: list, beam: int, max_tokens: int, no_repeat: int) -> list[list[int]]:
            return self.generate(self.encode_images(batch, batch_size), beam=beam, max_tokens=max_tokens,
                                 no_repeat=no_repeat)

        return caption_batches(images, batch_size, beam, max_tokens, no_repeat, pieces_of, self.decode,
                              owner=self)

    def decode(self, pieces: list[int]) -> str:
        """Word pieces (as `generate` returns them) -> text."""
        return caption_text(self._text[0].decode(pieces))

    # -- saving ---------------------------------------------------------------------------------
    def trained_state(self) -> dict[str, Tensor]:
        """The adapters, prefix and output layers (the frozen towers are not saved)."""
        return {k: v.detach().contiguous() for k, v in self.named_parameters() if k in self._trained}

    def save(self, folder: str | Path) -> Path:
        """Write config.json + model.safetensors (the trained parts) atomically; returns the folder."""
        from polymodal.models.dual_encoder import save_trained

        return save_trained(self, folder, "captioner")


def is_captioner_folder(path: str | Path) -> bool:
    return folder_type(path) == "captioner"


def load_captioner(folder: str | Path) -> Captioner:
    folder = Path(folder)
    raw = read_folder_config(folder, "`polymodal train captioner`")
    model = Captioner(settings_from(folder, raw, CaptionerConfig))
    from polymodal.models.dual_encoder import load_trained_weights

    return load_trained_weights(model, folder, raw)
