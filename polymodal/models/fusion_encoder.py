"""FusionEncoder: a ViLT/VisualBERT-style model for visual question answering over the pretrained towers.

    image -> EfficientNet-Lite0 spatial map [B, 1280, g, g] -> g*g grid tokens -> LayerNorm + Linear -> [B, g*g, D]
             (+ learned 2-D position embedding, + optionally a linear embedding of the raw pixel patch of each cell)
    text  -> MiniLM token states [B, L, 384] (attention mask = padding mask) -> LayerNorm + Linear -> [B, L, D]
    fusion (any of polymodal.fusion, named in the config) -> pooled [B, D] (late fusion: each modality's decision
             [B, M, D]; with decision_heads the VQA and ITM heads read each and their outputs are averaged)
    heads:  VQA: MLP -> logits over the answer vocabulary (built from the training answers; absent in an encoder
                 that was only pretrained -- `add_vqa_head` adds a fresh one for fine-tuning)
            ITM (optional): Linear -> one logit, "does this text match this image"
            MLM (optional, pretraining): fused text tokens at masked positions -> Linear+GELU+LayerNorm to 384 ->
                 logits over MiniLM's word-piece vocabulary, tied to the frozen tower's word-embedding matrix (only
                 the transform and a bias are trained). The words are masked at the tower's INPUT (the token states
                 are computed from the masked sentence), so a masked token's state cannot leak its word.
            MRM (optional, pretraining): masked grid cells get a learned mask embedding (+ their position) before
                 the fusion; their fused image tokens -> MLP -> the cell's 1280-d feature ("regress", scored
                 against the LayerNorm-ed feature) or its ImageNet class distribution ("classify": the tower's own
                 classifier applied to the cell).
            MLM needs a fusion with fused text tokens and MRM one with fused image tokens (`fused_token_modalities`):
            co_attention and single_stream have both, cross_attention has its query modality's tokens.

The towers are frozen (eval mode); their outputs are what the training feature cache stores
(`image_cache_input`, `text_cache_input`), so an epoch costs no tower pass. Only the projections, fusion and heads
are saved (config.json with the answer vocabulary + model.safetensors): a saved model is a few MB.

Multiple choice (`answer(..., choices=[...])`): two or more candidates in the answer vocabulary are ranked by the
classifier's logits restricted to them (softmax over the candidates); a lone one gets its full-vocabulary probability.
If some candidates are outside the vocabulary, the
in-vocabulary ones keep their full-vocabulary probability and each outside one is scored by the ITM head as
sigmoid(ITM(image, question + " " + candidate)) -- or 0.0 when the model has no ITM head (it cannot judge them).
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from polymodal.models.folders import config_from_dict, folder_type, read_folder_config, settings_from
from polymodal.data.answers import check_row_choices, checked_choices, choice_index, comparable_answer, unique_choices
from polymodal.data.images import ImageTransform
from polymodal.encoders.efficientnet import grid_transform
from polymodal.errors import PolymodalError
from polymodal.fusion import FUSIONS, CrossAttentionFusion, FusionOutput, LateFusion, build_fusion
from polymodal.fusion.base import decision_level
from polymodal.models.beam_search import MAX_TOKENS
from polymodal.models.inputs import as_images, as_texts, check_count, check_fraction, one_question, vqa_rows
from polymodal.models.modes import check_float32, in_eval_mode
from polymodal.models.not_finite import finite_answer, finite_ranking, finite_rows
from polymodal.models.summary import image_tower, summary

log = logging.getLogger(__name__)

IMAGE_DIM, TEXT_DIM = 1280, 384
IMAGE_BLOCK = 512  # distinct images predict() and predict_choices() encode and hold at a time (~128 MB of grids)
PATCH = 8  # raw-pixel patch side per grid cell (pixels are average-pooled to grid * PATCH first)
MRM_TARGETS = ("", "regress", "classify")
N_CLASSES = 1000  # ImageNet classes of the image tower's classifier (MRM "classify" targets)
FREEZABLE = {  # freeze(parts) names -> the attributes they cover
    "image_proj": ("image_proj", "pixel_proj", "image_pos", "mask_token"),
    "text_proj": ("text_proj",),
    "projections": ("image_proj", "pixel_proj", "image_pos", "mask_token", "text_proj"),
    "fusion": ("fusion",),
    "itm": ("itm",),
    "vqa": ("vqa_head",),
    "mlm": ("mlm_transform", "mlm_bias"),
    "mrm": ("mrm",),
}


def fused_token_modalities(fusion: str, options: dict) -> tuple[str, ...]:
    """Which modalities' fused token states the fusion returns (``FusionOutput.tokens``): MLM needs "text", MRM
    needs "image". co_attention and single_stream return both; cross_attention its query modality's tokens
    (``options["query"]``: 0 = image, 1 = text, the fusion encoder's default); the pooling fusions none."""
    if fusion in ("co_attention", "single_stream"):
        return ("image", "text")
    if fusion == "cross_attention":
        return ("image",) if options.get("query", 1) == 0 else ("text",)
    return ()


@dataclass
class FusionEncoderConfig:
    name: str = "fusion-encoder"
    fusion: str = "cross_attention"  # any name in polymodal.fusion.FUSIONS
    fusion_options: dict = field(default_factory=dict)  # that fusion's options, e.g. {"layers": 2}
    dim: int = 128  # D: token width inside the fusion
    dropout: float = 0.1  # on the projected tokens and in the VQA head; the fusion's own: fusion_options["dropout"]
    answers: list = field(default_factory=list)  # the answer vocabulary (classifier outputs, in order)
    itm_head: bool = False  # an image-text matching head (scores candidates outside the vocabulary)
    mlm_head: bool = False  # masked language modelling head (pretraining; needs fused text tokens)
    mrm_head: str = ""  # masked region modelling head: "" (none), "regress" or "classify" (needs fused image tokens)
    pixel_patches: bool = False  # add a linear embedding of each grid cell's raw pixels (exact colour)
    image_size: int = 224  # resize (short side) and centre crop; 224 -> a 7x7 grid
    max_question_tokens: int = 32
    # late fusion: the VQA and ITM heads read each modality's decision and their outputs are averaged (decision
    # level); False, as models saved before it load: the heads read the averaged decision (additive fusion)
    decision_heads: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "FusionEncoderConfig":
        return config_from_dict(cls, d, "fusion-encoder")

    def validate(self) -> None:
        if not isinstance(self.fusion, str):
            raise PolymodalError(f"fusion must be a registered name, got a {type(self.fusion).__name__}; for your own "
                                 "module: polymodal.fusion.register_fusion(YourFusion), then fusion=YourFusion.name")
        if isinstance(self.answers, str) or not isinstance(self.answers, (list, tuple)):
            raise PolymodalError(f"answers must be a list of answer strings, got {type(self.answers).__name__}")
        if self.fusion not in FUSIONS:
            raise PolymodalError(f"unknown fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise PolymodalError(f"dim must be a positive int, got {self.dim!r}")
        if not isinstance(self.fusion_options, dict):
            raise PolymodalError(f"fusion_options must be a dict of the fusion's settings (e.g. {{\"layers\": 2}}), "
                                 f"got {self.fusion_options!r:.60}")
        check_fraction(self.dropout, "dropout")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise PolymodalError(f"image_size must be a whole number of pixels (a multiple of 32), got "
                                 f"{self.image_size!r}")
        bad = [a for a in self.answers if not (isinstance(a, str) and a.strip())]
        if bad:
            raise PolymodalError(f"answers must be non-blank strings, got {bad[0]!r} among them")
        mq = self.max_question_tokens  # [CLS] + at least one word + [SEP]; MiniLM has 512 positions
        if isinstance(mq, bool) or not isinstance(mq, int) or not 3 <= mq <= MAX_TOKENS:
            raise PolymodalError(f"max_question_tokens must be a whole number from 3 to {MAX_TOKENS} (word pieces "
                                 f"with [CLS] and [SEP]), got {mq!r}")
        # no answers: an encoder that was only pretrained (no VQA head until fine-tuning adds one)
        if len(set(self.answers)) != len(self.answers):
            raise PolymodalError("the answer vocabulary has duplicates")
        if self.image_size % 32 or self.image_size < 32:
            raise PolymodalError(f"image_size must be a multiple of 32 (the tower's stride), got {self.image_size}")
        if self.mrm_head not in MRM_TARGETS:
            raise PolymodalError(f"mrm_head must be one of {', '.join(map(repr, MRM_TARGETS))}, got {self.mrm_head!r}")
        max_len = None
        if self.fusion == "single_stream":  # its default (512) too: a 768 px grid has 576 cells
            default = inspect.signature(FUSIONS["single_stream"]).parameters["max_len"].default
            max_len = self.fusion_options.get("max_len", default)
        longest = max((self.image_size // 32) ** 2, mq)  # image grid cells, question word pieces
        if isinstance(max_len, int) and not isinstance(max_len, bool) and max_len < longest:
            # found here, not at the first training step, after every photo and question was encoded and cached
            said = "" if "max_len" in self.fusion_options else " (its default)"
            raise PolymodalError(f"single_stream fusion's max_len {max_len}{said} is below the {longest} tokens a "
                                 f"modality can have ({(self.image_size // 32) ** 2} grid cells at image_size "
                                 f"{self.image_size}, max_question_tokens {mq}); pass max_len={longest} or more")
        support = fused_token_modalities(self.fusion, self.fusion_options)
        if self.mlm_head and "text" not in support:
            raise PolymodalError(
                f"masked language modelling predicts words from the fused text tokens, but the {self.fusion} fusion "
                f"{_returns(support)}; use co_attention or single_stream (or cross_attention with query 1)")
        if self.mrm_head and "image" not in support:
            raise PolymodalError(
                f"masked region modelling predicts grid cells from the fused image tokens, but the {self.fusion} fusion "
                f"{_returns(support)}; use co_attention or single_stream (or cross_attention with query 0)")

    @property
    def grid(self) -> int:
        return self.image_size // 32

    @property
    def transform(self) -> ImageTransform:
        return grid_transform(self.image_size)


class FusionEncoder(nn.Module):
    """Answers questions about images: ``answer(image, question)`` -> ``{"answer", "score", "alternatives"}``,
    ``predict(images, questions)`` / ``predict_choices(...)`` for many rows, ``explain(image, question)`` -> a heat
    map. Inside: image grid tokens + question tokens -> fusion -> VQA answer logits (and an optional ITM logit).

    Shapes: image cache input ``[B, g*g, F]`` (F = 1280, + 3*8*8 raw pixels with ``pixel_patches``); text cache
    input ``([B, L, 384], mask [B, L])``; answer logits ``[B, A]``. Pretraining heads: see the module docstring."""

    def __init__(self, config: FusionEncoderConfig, version: str = "untrained") -> None:
        super().__init__()
        from polymodal.encoders.efficientnet import EfficientNetLite0
        from polymodal.encoders.text import SentenceEncoder, minilm_path

        config = copy.deepcopy(config)  # the model's own: its defaults and added heads never reach the caller's
        if config.fusion == "cross_attention" and isinstance(config.fusion_options, dict) \
                and "query" not in config.fusion_options:
            # the question asks, the image answers: text tokens query the grid (and the attention is a heat map)
            config.fusion_options = {**config.fusion_options, "query": 1}
        config.validate()
        self.config, self.version, self.name = config, version, config.name
        self.transform = config.transform
        self.answers = list(config.answers)
        self.answer_index = choice_index(self.answers)  # keyed as unique_choices keys the choices
        d, n_tokens = config.dim, config.grid**2

        self.image_tower = EfficientNetLite0()
        self.text_tower = SentenceEncoder(minilm_path(), max_length=config.max_question_tokens)
        self.image_tower.requires_grad_(False)
        self.text_tower.requires_grad_(False)

        self.image_proj = nn.Sequential(nn.LayerNorm(IMAGE_DIM), nn.Linear(IMAGE_DIM, d))
        self.pixel_proj = nn.Linear(3 * PATCH * PATCH, d) if config.pixel_patches else None
        self.image_pos = nn.Parameter(0.02 * torch.randn(n_tokens, d))
        self.text_proj = nn.Sequential(nn.LayerNorm(TEXT_DIM), nn.Linear(TEXT_DIM, d))
        self.drop = nn.Dropout(config.dropout)
        self.fusion = build_fusion(config.fusion, [d, d], d, **config.fusion_options)
        self.vqa_head = self._new_vqa_head(len(self.answers)) if self.answers else None
        self.itm = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1)) if config.itm_head else None
        if config.mlm_head:  # decoder tied to the frozen word embeddings: transform + per-word bias are trained
            self.mlm_transform = nn.Sequential(nn.Linear(d, TEXT_DIM), nn.GELU(), nn.LayerNorm(TEXT_DIM))
            self.mlm_bias = nn.Parameter(torch.zeros(self.word_embeddings.shape[0]))
        else:
            self.mlm_transform, self.mlm_bias = None, None
        if config.mrm_head:
            self.mask_token = nn.Parameter(0.02 * torch.randn(d))
            out = IMAGE_DIM if config.mrm_head == "regress" else N_CLASSES
            self.mrm = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, out))
        else:
            self.mask_token, self.mrm = None, None

    def _new_vqa_head(self, n_answers: int) -> nn.Module:
        d = self.config.dim
        return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(self.config.dropout),
                             nn.Linear(2 * d, n_answers))

    # -- heads added or removed after pretraining --------------------------------------------------
    def add_vqa_head(self, answers: Sequence[str]) -> None:
        """A fresh (randomly initialised) VQA head over ``answers``, replacing any existing one: fine-tuning a
        pretrained encoder for question answering."""
        answers = [str(a) for a in answers]
        if not answers or len(set(answers)) != len(answers):
            raise PolymodalError("a VQA head needs a non-empty answer vocabulary without duplicates")
        self.config.answers = answers
        self.answers = list(answers)
        self.answer_index = choice_index(self.answers)  # keyed as unique_choices keys the choices
        self.vqa_head = self._new_vqa_head(len(answers))

    def add_itm_head(self) -> None:
        if self.itm is None:
            self.itm = nn.Sequential(nn.LayerNorm(self.config.dim), nn.Linear(self.config.dim, 1))
            self.config.itm_head = True

    def drop_pretraining_heads(self) -> None:
        """Remove the MLM and MRM heads (and the region mask embedding): a fine-tuned model does not need them."""
        self.mlm_transform, self.mlm_bias, self.mask_token, self.mrm = None, None, None, None
        self.config.mlm_head, self.config.mrm_head = False, ""

    def freeze(self, parts: str | Sequence[str]) -> list[str]:
        """Stop training ``parts`` (a name or names in FREEZABLE: image_proj, text_proj, projections, fusion, itm,
        vqa, mlm, mrm); returns the frozen parameter names. The trainer only optimises parameters that require gradients."""
        parts = [parts] if isinstance(parts, str) else list(parts)
        unknown = sorted(set(parts) - set(FREEZABLE))
        if unknown:
            raise PolymodalError(f"cannot freeze {unknown}; choose from {', '.join(FREEZABLE)}")
        present = {name.split(".")[0] for name, _ in self.named_parameters()}
        absent = [p for p in parts if not present & set(FREEZABLE[p])]
        if absent:  # freezing nothing would read as done
            raise PolymodalError(f"this model has no {', '.join(absent)} part to freeze (a VQA model drops the "
                                 "pretraining heads mlm and mrm; itm exists only with itm_head); freeze parts it has: "
                                 f"{', '.join(p for p in FREEZABLE if present & set(FREEZABLE[p]))}")
        attrs = {a for p in parts for a in FREEZABLE[p]}
        frozen = []
        for name, param in self.named_parameters():
            if name.split(".")[0] in attrs:
                param.requires_grad_(False)
                frozen.append(name)
        return frozen

    @property
    def word_embeddings(self) -> Tensor:
        """MiniLM's frozen word-piece embedding matrix ``[V, 384]`` (the tied MLM decoder)."""
        return self.text_tower.model.embeddings.word_embeddings.weight

    # -- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.image_tower.eval()  # frozen towers: BatchNorm statistics fixed, cached features stay valid
        self.text_tower.eval()
        return self

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def __repr__(self) -> str:  # what it is, not nn.Module's layer tree (models/summary.py)
        c, g = self.config, self.config.grid
        heads = [f"VQA over {len(self.answers)} answers" if self.vqa_head is not None else "no VQA head (pretrained)",
                 *(name for name, on in (("ITM", c.itm_head), ("MLM", c.mlm_head), (f"MRM {c.mrm_head}", c.mrm_head))
                   if on)]
        return summary(self, f"{len(self.answers)} answers", [
            ("towers", f"{image_tower(self)} {g}x{g} grid + MiniLM-L6 question tokens, frozen"),
            ("fusion", f"{c.fusion}, dim {c.dim}"), ("heads", ", ".join(heads))])

    # -- what the feature cache stores ----------------------------------------------------------
    @property
    def image_cache_signature(self) -> str:
        return f"lite0|grid|pixels{int(self.config.pixel_patches)}|{self.transform.to_dict()}"

    @property
    def text_cache_signature(self) -> str:
        return f"all-MiniLM-L6-v2|tokens|max{self.config.max_question_tokens}"

    @torch.no_grad()
    def image_cache_input(self, pixels: Tensor) -> Tensor:
        """Normalised pixels ``[B, 3, S, S]`` -> grid tokens ``[B, g*g, F]``: the tower's 1280-d cell features,
        followed (with pixel_patches) by the cell's raw pixels average-pooled to 8x8 (192 values)."""
        check_float32(self, "fusion encoder")
        grid = self.image_tower.spatial(pixels).float()  # [B, 1280, g, g]
        tokens = grid.flatten(2).transpose(1, 2)
        if not self.config.pixel_patches:
            return tokens.contiguous()
        g = self.config.grid
        small = nn.functional.adaptive_avg_pool2d(pixels.float(), g * PATCH)  # [B, 3, g*8, g*8]
        patches = small.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # [B, 3, g, g, 8, 8]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(pixels.shape[0], g * g, 3 * PATCH * PATCH)
        return torch.cat([tokens, patches], dim=-1).contiguous()

    @torch.no_grad()
    def text_cache_input(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Strings -> MiniLM token states ``[B, L, 384]`` (padding zeroed) and mask ``[B, L]`` (True = real)."""
        batch = self.text_tower.tokenize(list(texts))
        return self.text_states(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"].bool()

    @torch.no_grad()
    def text_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Word-piece ids ``[B, L]`` (e.g. with [MASK]s put in for MLM) -> MiniLM token states ``[B, L, 384]``,
        padding zeroed."""
        states = self.text_tower.model(input_ids=input_ids, attention_mask=attention_mask,
                                       token_type_ids=torch.zeros_like(input_ids)).last_hidden_state.float()
        mask = attention_mask.bool()
        return torch.where(mask[..., None], states, states.new_zeros(()))

    # -- trainable part ---------------------------------------------------------------------------
    def image_tokens(self, x: Tensor, row_image: Tensor | None = None, region_mask: Tensor | None = None) -> Tensor:
        """Cached image input ``[I, T, F]`` -> ``[I, T, D]`` (or ``[R, T, D]`` with ``row_image`` ``[R]``: the
        projection runs once per image). ``region_mask`` ``[R, T]`` (True = masked, MRM) replaces those cells'
        content by the learned mask embedding; their position embedding stays."""
        x = x.float()
        tokens = self.image_proj(x[..., :IMAGE_DIM])
        if self.pixel_proj is not None:
            tokens = tokens + self.pixel_proj(x[..., IMAGE_DIM:])
        if row_image is not None:
            tokens = tokens[row_image]
        if region_mask is not None:
            if self.mask_token is None:
                raise PolymodalError("masking grid cells needs the MRM mask embedding; build with mrm_head set")
            tokens = torch.where(region_mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        return self.drop(tokens + self.image_pos[: x.shape[1]])

    def text_tokens(self, states: Tensor) -> Tensor:
        return self.drop(self.text_proj(states.float()))

    def fuse_tokens(self, image_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor) -> FusionOutput:
        return self.fusion([image_tokens, text_tokens], [None, text_mask])

    def fuse(self, images: Tensor, states: Tensor, mask: Tensor, row_image: Tensor | None = None,
             region_mask: Tensor | None = None) -> FusionOutput:
        """images ``[I, T, F]`` (cache input), question states ``[R, L, 384]`` + mask; ``row_image`` ``[R]`` picks
        each row's image (the image projection then runs once per image, not once per question); ``region_mask``
        ``[R, T]`` masks grid cells (MRM)."""
        self._check_inputs(images, states, mask, row_image)
        img = self.image_tokens(images, row_image, region_mask)
        return self.fuse_tokens(img, self.text_tokens(states), mask)

    def _check_inputs(self, images: Any, states: Any, mask: Any, row_image: Any) -> None:
        """One clear error for inputs that would fail deep inside torch (or, worse, broadcast)."""
        check_float32(self, "fusion encoder")
        cells = self.config.grid**2
        width = IMAGE_DIM + (PATCH * PATCH * 3 if self.config.pixel_patches else 0)
        for what, x in (("images", images), ("states", states), ("mask", mask)):
            if not isinstance(x, Tensor):
                raise PolymodalError(f"{what} must be a torch tensor, got {type(x).__name__}; encode_images() and "
                                     "encode_questions() make them from images and strings")
        if images.ndim != 3 or tuple(images.shape[1:]) != (cells, width):
            raise PolymodalError(f"images must be grid features [N, {cells}, {width}] (encode_images' output), got "
                                 f"{tuple(images.shape)}")
        if states.ndim != 3 or states.shape[2] != TEXT_DIM or mask.shape != states.shape[:2]:
            raise PolymodalError(f"states must be [R, L, 384] with a mask [R, L] (encode_questions' output), got "
                                 f"{tuple(states.shape)} and {tuple(mask.shape)}")
        if row_image is None:
            if len(images) != len(states):
                raise PolymodalError(f"{len(images)} images for {len(states)} questions; pass one image per question "
                                     "or row_image [R] (each question's image index)")
        elif not isinstance(row_image, Tensor) or row_image.dtype not in (torch.int32, torch.int64) \
                or row_image.shape != (len(states),) or (len(row_image) and int(row_image.max()) >= len(images)) \
                or (len(row_image) and int(row_image.min()) < 0):
            raise PolymodalError(f"row_image must be an integer tensor [{len(states)}] of image indices in "
                                 f"0..{len(images) - 1}, got {row_image!r:.80}")

    def split_fused(self, out: FusionOutput, n_image: int, n_text: int) -> tuple[Tensor | None, Tensor | None]:
        """The fused (image ``[R, T, D]``, text ``[R, L, D]``) token states of a fusion output; None for a modality
        the fusion returns no tokens for."""
        if out.tokens is None:
            return None, None
        if isinstance(self.fusion, CrossAttentionFusion):
            return (out.tokens, None) if self.fusion.query_index == 0 else (None, out.tokens)
        if out.tokens.shape[1] == n_image + n_text:
            image, text = out.tokens.split([n_image, n_text], dim=1)
            return image, text
        return None, None

    def vqa_logits(self, images: Tensor, states: Tensor, mask: Tensor, row_image: Tensor | None = None) -> Tensor:
        """-> ``[R, A]`` answer logits."""
        if self.vqa_head is None:
            raise PolymodalError("this fusion encoder has no VQA head (it was only pretrained); fine-tune one with "
                                 "`polymodal train vqa --model FOLDER --qa ...` (train_vqa with model=FOLDER in "
                                 "Python)")
        return self._head(self.vqa_head, self.fuse(images, states, mask, row_image))

    def mlm_logits(self, images: Tensor, states: Tensor, mask: Tensor, positions: Tensor,
                   row_image: Tensor | None = None) -> Tensor:
        """Masked-word logits ``[M, V]`` over MiniLM's vocabulary at the ``M`` True entries of ``positions``
        ``[R, L]``; ``states`` must come from the masked sentences (see `text_states`)."""
        if self.mlm_transform is None:
            raise PolymodalError("this fusion encoder has no MLM head; build it with mlm_head: true")
        out = self.fuse(images, states, mask, row_image)
        _, text = self.split_fused(out, self.config.grid**2, states.shape[1])
        if text is None:
            raise PolymodalError(f"the {self.config.fusion} fusion returned no fused text tokens for MLM")
        hidden = self.mlm_transform(text[positions])
        return hidden @ self.word_embeddings.detach().to(hidden.dtype).T + self.mlm_bias

    def mrm_predictions(self, images: Tensor, states: Tensor, mask: Tensor, region_mask: Tensor,
                        row_image: Tensor | None = None) -> Tensor:
        """Predictions ``[M, 1280]`` (regress) or class logits ``[M, 1000]`` (classify) for the ``M`` masked cells
        (True entries of ``region_mask`` ``[R, T]``, in row-major order), each row seeing its text."""
        if self.mrm is None:
            raise PolymodalError("this fusion encoder has no MRM head; build it with mrm_head: regress or classify")
        out = self.fuse(images, states, mask, row_image, region_mask)
        image, _ = self.split_fused(out, region_mask.shape[1], states.shape[1])
        if image is None:
            raise PolymodalError(f"the {self.config.fusion} fusion returned no fused image tokens for MRM")
        return self.mrm(image[region_mask])

    @torch.no_grad()
    def mrm_targets(self, images: Tensor, region_mask: Tensor, row_image: Tensor | None = None) -> Tensor:
        """What MRM predicts for the masked cells: their raw 1280-d features ``[M, 1280]`` (regress; the loss
        normalises them) or the tower's ImageNet logits for each cell ``[M, 1000]`` (classify)."""
        feats = images[..., :IMAGE_DIM].float()
        if row_image is not None:
            feats = feats[row_image]
        cells = feats[region_mask]
        return self.image_tower.net._fc(cells).float() if self.config.mrm_head == "classify" else cells

    def itm_logits(self, images: Tensor, states: Tensor, mask: Tensor, row_image: Tensor | None = None) -> Tensor:
        """-> ``[R]`` image-text match logits (needs ``itm_head``)."""
        if self.itm is None:
            raise PolymodalError("this fusion encoder has no ITM head; train it with itm_head: true")
        return self._head(self.itm, self.fuse(images, states, mask, row_image))[:, 0]

    def _head(self, head: nn.Module, out: FusionOutput) -> Tensor:
        return decision_level(head, out) if self.config.decision_heads else head(out.pooled)

    def forward(self, images: Tensor, states: Tensor, mask: Tensor, row_image: Tensor | None = None) -> Tensor:
        return self.vqa_logits(images, states, mask, row_image)

    # -- inference ----------------------------------------------------------------------------------
    def encode_images(self, images: Any, batch_size: int = 32) -> Tensor:
        """An image or images (paths / PIL images / arrays, as encode_image takes them) -> cache inputs ``[N, T, F]``
        (one tower pass)."""
        images, batch_size = as_images(images), check_count(batch_size, "batch_size")
        out = []
        for i in range(0, len(images), batch_size):
            out.append(self.image_cache_input(torch.from_numpy(self.transform(list(images[i : i + batch_size])))))
        return torch.cat(out) if out else torch.zeros(0, self.config.grid**2, IMAGE_DIM)

    def encode_questions(self, questions: Any, batch_size: int = 128) -> tuple[Tensor, Tensor]:
        """A string or strings -> padded token states ``[N, L, 384]`` and mask ``[N, L]``."""
        questions = as_texts(questions, "questions")
        states, masks = [], []
        for i in range(0, len(questions), batch_size):
            s, m = self.text_cache_input(questions[i : i + batch_size])
            states.append(s)
            masks.append(m)
        if not states:  # no question: empty batches, as encode_images gives for no image
            return torch.zeros(0, 1, TEXT_DIM), torch.zeros(0, 1, dtype=torch.bool)
        width = max(s.shape[1] for s in states)
        states = [nn.functional.pad(s, (0, 0, 0, width - s.shape[1])) for s in states]
        masks = [nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]
        return torch.cat(states), torch.cat(masks)

    @in_eval_mode
    @torch.inference_mode()
    def logits_for(self, image_inputs: Tensor, q_states: Tensor, q_mask: Tensor, row_image: Tensor,
                   row_question: Tensor, batch_size: int = 256) -> Tensor:
        """Answer logits ``[R, A]`` for rows (image index, question index) over encoded images and questions."""
        out = []
        for s in range(0, len(row_image), batch_size):
            ri, rq = row_image[s : s + batch_size], row_question[s : s + batch_size]
            used, local = torch.unique(ri, return_inverse=True)
            states, mask = q_states[rq], q_mask[rq]
            width = int(mask.sum(1).max()) if len(rq) else 1
            out.append(self.vqa_logits(image_inputs[used], states[:, :width], mask[:, :width], local).float())
        return torch.cat(out) if out else torch.zeros(0, len(self.answers))

    @finite_rows
    @in_eval_mode
    def predict(self, images: Sequence[Any], questions: Sequence[str], batch_size: int = 256) -> list[tuple[str, float]]:
        """One (answer, probability) per (image, question) row; each distinct image is encoded once, and each distinct
        question once per block of IMAGE_BLOCK images (see _block_logits). A row scored NaN has no answer; every row
        so is an error (see not_finite.finite_rows)."""
        images, questions = vqa_rows(images, questions)
        batch_size = check_count(batch_size, "batch_size")
        if not questions:
            return []
        out: list = [None] * len(questions)
        for rows, logits, _, _, _ in self._block_logits(images, questions, batch_size):
            score, best = logits.softmax(-1).max(-1)
            for r, b, s in zip(rows, best, score):
                out[r] = (self.answers[int(b)], float(s))
        return out

    @torch.inference_mode()
    def _block_logits(self, images: list, questions: list[str], batch_size: int) -> Iterator[tuple]:
        """Answer logits of the rows, IMAGE_BLOCK distinct images at a time: each distinct image is encoded once,
        and only one block's grids (0.25 MB per image at 224 px) are held, however many rows predict() is given
        (all of them were: 20,000 photos held 5 GB). -> (the block's row positions, their logits [R, A], the
        block's image inputs, each row's image index in them, each row's question)."""
        img_list, row_image = _dedupe(images)
        blocks: dict[int, list[int]] = {}
        for r, i in enumerate(row_image):
            blocks.setdefault(i // IMAGE_BLOCK, []).append(r)
        for block, rows in sorted(blocks.items()):
            first = block * IMAGE_BLOCK
            image_inputs = self.encode_images(img_list[first : first + IMAGE_BLOCK])
            q_list, row_question = _dedupe([questions[r] for r in rows])
            q_states, q_mask = self.encode_questions(q_list)
            local = [row_image[r] - first for r in rows]
            logits = self.logits_for(image_inputs, q_states, q_mask, torch.as_tensor(local),
                                     torch.as_tensor(row_question), batch_size)
            yield rows, logits, image_inputs, local, [q_list[q] for q in row_question]

    @in_eval_mode
    @torch.inference_mode()
    def answer(self, image: Any, question: str, choices: Sequence[str] | None = None, top_k: int = 3) -> dict:
        """-> ``{"answer", "score", "alternatives": [(answer, score), ...]}``: the best answer and its probability;
        alternatives are the ``top_k`` best, best first (so alternatives[0] is the answer itself). With
        ``choices``, only those candidates are ranked (see the module docstring for how)."""
        question = one_question(question)
        top_k = check_count(top_k, "top_k")
        self._warn_if_cut(question)
        choices = checked_choices(choices, self.check_choices)  # before the image is read
        image_inputs = self.encode_images([image])
        states, mask = self.encode_questions([question])
        logits = self.vqa_logits(image_inputs, states, mask)[0].float()
        if choices is None:
            ranked = [(self.answers[int(i)], float(p))
                      for p, i in zip(*logits.softmax(-1).topk(min(top_k, len(self.answers))))]
        else:
            ranked = self._rank_choices(logits, image_inputs, question, choices)
        top = ranked[:top_k]
        return finite_answer({"answer": top[0][0], "score": top[0][1], "alternatives": top})

    def _itm_text(self, question: str, answer: str, what: str = "a choice") -> str:
        """The text the ITM head scores a candidate by: "QUESTION ANSWER", the answer kept whole however long the
        question (see FastTokenizer.question_with_answer; ``what`` names the answer in its error)."""
        fast = getattr(self.text_tower, "_fast", None)
        return fast.question_with_answer(question, answer, what) if fast is not None else f"{question} {answer}"

    def _warn_if_cut(self, question: str) -> None:
        """A question longer than max_question_tokens loses its end (often the part that asks): say so."""
        fast = getattr(self.text_tower, "_fast", None)
        if fast is not None and fast.warn_if_question_cut(question,
                                                          f"max_question_tokens={self.config.max_question_tokens}"):
            self.text_tower._warned_cut = True  # this warning stands for the tower's (warn_once_if_cut): one, not two

    @finite_rows
    @in_eval_mode
    @torch.inference_mode()
    def predict_choices(self, images: Sequence[Any], questions: Sequence[str], choices: Sequence[Sequence[str]],
                        batch_size: int = 256) -> list[tuple[str, float]]:
        """Multiple choice over rows: the best of each row's candidates and its score, ranked as ``answer(...,
        choices=...)`` ranks them; images and questions are encoded as predict() encodes them (NaN: as predict())."""
        images, questions = vqa_rows(images, questions)
        choices = check_row_choices(choices, len(questions), self.check_choices)
        batch_size = check_count(batch_size, "batch_size")  # before the towers run
        if not choices:
            return []
        out: list = [None] * len(questions)
        for rows, logits, image_inputs, local, row_questions in self._block_logits(images, questions, batch_size):
            for r, row_logits, i, q in zip(rows, logits, local, row_questions):
                out[r] = self._rank_choices(row_logits, image_inputs[i : i + 1], q, choices[r])[0]
        return out

    def check_choices(self, choices: Sequence[str]) -> tuple[dict[str, str], str]:
        """Candidate answers -> (unique_choices(choices), a warning naming those that score 0.0 (outside the
        vocabulary, no ITM head) or ""); one error when the model can score none of them."""
        seen = unique_choices(choices)
        outside = [k for k in seen if k not in self.answer_index]
        if len(outside) == len(seen) and self.itm is None:  # every choice would score 0: an answer made of nothing
            more = f", ... ({len(self.answers)} in all)" if len(self.answers) > 10 else ""
            known = ", ".join(self.answers[:10]) + more
            hint = "; separate choices with commas, e.g. yes,no" if any(" " in c or "[" in c for c in seen.values()) else ""
            raise PolymodalError(f"model {self.name!r} knows none of the choices ({', '.join(map(repr, seen.values()))}) "
                                 f"and has no ITM head to score other answers; pass answers it knows, e.g. {known}{hint}")
        note = f"{self.name} has no ITM head to score choices outside its answers; these score 0: " + \
            ", ".join(seen[k] for k in outside) if outside and self.itm is None else ""
        return seen, note

    def _rank_choices(self, logits: Tensor, image_inputs: Tensor, question: str, choices: Sequence[str]) -> list:
        seen = self.check_choices(choices)[0]
        inside = [k for k in seen if k in self.answer_index]
        outside = [k for k in seen if k not in self.answer_index]
        scores: dict[str, float] = {}
        if not outside and len(inside) > 1:
            idx = torch.tensor([self.answer_index[k] for k in inside])
            scores = dict(zip(inside, logits[idx].softmax(-1).tolist()))
        else:
            # known choices keep their full-vocabulary probability (so does a lone one: a softmax over one choice
            # says 1.0 whatever the photo) and unknown ones get the ITM sigmoid. Scoring every choice with the ITM
            # head instead (one kind of score) was tried in stop 31 and lost: an ITM head trained beside a strong
            # VQA head picked 0.42 of easy-VQA answers with one unknown distractor, this 1.0
            probs = logits.softmax(-1)
            scores = {k: float(probs[self.answer_index[k]]) for k in inside}
            if outside and self.itm is not None:
                states, mask = self.encode_questions([self._itm_text(question, seen[k]) for k in outside])
                match = torch.sigmoid(self.itm_logits(image_inputs, states, mask, torch.zeros(len(outside), dtype=torch.long)))
                scores.update(zip(outside, match.tolist()))
            else:
                scores.update({k: 0.0 for k in outside})  # (none when every choice is known)
        order = sorted(seen, key=lambda k: -scores[k])
        return finite_ranking([(seen[k], float(scores[k])) for k in order], bool(torch.isfinite(logits).all()))

    @property
    def heat_map_method(self) -> str:
        """How explain() makes its maps, as a saved map's strip names it: "attention map" for a fusion that returns
        attention over the image tokens, else "gradient relevance". Asked of the fusion itself (one pass over
        blank tokens): a fusion registered by the user says by what it returns, as it does in explain(). The pass
        runs once per fusion: the answer is kept beside the fusion it is of (another fusion set later is asked)."""
        known = self.__dict__.get("_heat_map_method")
        if known is None or known[0] is not self.fusion:
            known = (self.fusion, self._ask_heat_map_method())
            self.__dict__["_heat_map_method"] = known  # a plain attribute: no submodule, no state_dict key
        return known[1]

    @in_eval_mode  # (a fusion of the user's with batch statistics: the blank pass leaves them alone)
    def _ask_heat_map_method(self) -> str:
        d, cells = self.config.dim, self.config.grid**2
        blank = self.image_pos.new_zeros(1, cells, d)
        with torch.no_grad():
            out = self.fuse_tokens(blank, blank[:, :1], torch.ones(1, 1, dtype=torch.bool, device=blank.device))
        return "attention map" if out.attention and out.attention[0] is not None else "gradient relevance"

    @in_eval_mode
    def explain(self, image: Any, question: str, answer: str | None = None) -> np.ndarray:
        """A ``[g, g]`` (7x7 at 224 px) float32 heat map in [0, 1] over the image grid: the fusion's last-layer
        attention over the image tokens (averaged over the positions that attend), or, for fusions without
        attention over the image, |gradient x input| relevance per image token of the logit behind ``answer``: its
        VQA logit, or for an answer outside the vocabulary the ITM logit of "QUESTION ANSWER" (as a choice is
        scored); the top answer's by default. An attention map is the pass's that scored the answer: the
        question's alone for every answer in the vocabulary."""
        if self.vqa_head is None:
            raise PolymodalError("this fusion encoder has no VQA head (it was only pretrained); fine-tune it first")
        question = one_question(question)
        g = self.config.grid
        key = None if answer is None else comparable_answer(answer)
        by_itm = key is not None and key not in self.answer_index
        if by_itm and self.itm is None:
            raise PolymodalError(f"{answer!r} is not among {self.name!r}'s answers and it has no ITM head to score it; "
                                 "explain one of its answers")
        with torch.inference_mode():
            image_inputs = self.encode_images([image])
            states, mask = self.encode_questions([self._itm_text(question, answer, "the answer") if by_itm
                                                  else question])
        image_inputs, states, mask = image_inputs.clone(), states.clone(), mask.clone()  # leave inference mode
        with torch.no_grad():
            out = self.fuse(image_inputs, states, mask)
        att = out.attention[0] if out.attention else None
        if att is not None:
            att = att[0].float()  # [Q, T]
            rows = att.sum(-1) > 0  # padded query positions carry no weight
            heat = att[rows].mean(0) if rows.any() else att.mean(0)
        else:
            with torch.enable_grad():
                img = self.image_tokens(image_inputs).detach().requires_grad_(True)
                fused = self.fuse_tokens(img, self.text_tokens(states), mask)
                if by_itm:
                    target = self._head(self.itm, fused)[0, 0]
                else:
                    logits = self._head(self.vqa_head, fused)[0]
                    target = logits[logits.argmax() if key is None else self.answer_index[key]]
                (grad,) = torch.autograd.grad(target, img)
            heat = (grad * img.detach())[0].sum(-1).abs()  # |gradient x input| per token
        heat = heat.detach().float().reshape(g, g)
        top = float(heat.max())
        return (heat / top if top > 0 else heat).numpy().astype(np.float32)

    # -- saving and loading ---------------------------------------------------------------------------
    def trained_state(self) -> dict[str, Tensor]:
        """Everything except the frozen towers."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()
                if not k.startswith(("image_tower.", "text_tower."))}

    def save(self, folder: str | Path) -> Path:
        """Write config.json (with the answer vocabulary) + model.safetensors atomically; returns the folder."""
        from polymodal.models.dual_encoder import save_trained

        return save_trained(self, folder, "fusion_encoder")


def choice_rows(images: Any, questions: Any, choices: Any, check) -> tuple[list, list, list[int], list[str], list[int]]:
    """predict_choices()'s arguments checked (``check``: the model's check_choices) -> (choices per row, distinct
    images, each row's image index, distinct questions, each row's question index)."""
    images, questions = vqa_rows(images, questions)
    return (check_row_choices(choices, len(questions), check), *_dedupe(images), *_dedupe(questions))


def _dedupe(items: Sequence[Any]) -> tuple[list, list[int]]:
    """Distinct items (paths and strings by value, other objects by identity) and each row's index into them."""
    index: dict[Any, int] = {}
    unique: list = []
    rows = []
    for item in items:
        key = str(item) if isinstance(item, (str, Path)) else id(item)
        if key not in index:
            index[key] = len(unique)
            unique.append(item)
        rows.append(index[key])
    return unique, rows


def _returns(support: tuple[str, ...]) -> str:
    if not support:
        return "returns only a pooled vector (no per-token outputs)"
    return f"returns fused tokens only for the {' and '.join(support)}"


def is_fusion_encoder_folder(path: str | Path) -> bool:
    return folder_type(path) == "fusion_encoder"


def continued_folder(name: str, task: str) -> Path:
    """The fusion encoder `polymodal train vqa|pretrain --model NAME` continues: a built-in name (easy-vqa) or a
    folder; otherwise one error saying what to pass (checked before any data is read)."""
    from polymodal.registry import MODELS, wrong_folder_hint
    from polymodal.training_photos import model_folder  # a built-in name's folder, or the path itself

    folder = model_folder(name)
    if folder is not None and is_fusion_encoder_folder(folder):
        return folder
    takes = ("model 'new', 'easy-vqa', a folder from `polymodal train vqa` or the model subfolder of a `polymodal "
             "train pretrain` run")
    if name in MODELS:
        raise PolymodalError(f"the built-in {name!r} is not a fusion encoder, so `polymodal train {task}` cannot "
                             f"continue it; pass {takes}")
    hint = wrong_folder_hint(name)
    if hint:
        raise PolymodalError(hint)
    if not Path(name).exists():
        raise PolymodalError(f"no model folder {name}; pass {takes}")
    raise PolymodalError(f"cannot {'train' if task == 'vqa' else task} from {name!r}, which is not a fusion encoder; "
                         f"pass {takes}")


def as_recorded(arch: dict) -> dict:
    """A late-fusion encoder's settings (config.json, a run's recorded arch) from before ``decision_heads`` existed:
    its heads read the averaged decision, so that is what it loads, resumes and continues as. Late is "late" or a
    registered subclass of it (a user's own late fusion gives decisions too)."""
    cls = FUSIONS.get(arch.get("fusion")) if isinstance(arch.get("fusion"), str) else None
    if cls is not None and issubclass(cls, LateFusion) and "decision_heads" not in arch:
        return {**arch, "decision_heads": False}
    return arch


def load_fusion_encoder(folder: str | Path) -> FusionEncoder:
    folder = Path(folder)
    raw = read_folder_config(folder, "`polymodal train vqa`")
    if raw.get("type") != "fusion_encoder":
        raise PolymodalError(f"{folder} holds a {raw.get('type', 'unknown')!r} model, not a fusion encoder")
    model = FusionEncoder(settings_from(folder, as_recorded(raw), FusionEncoderConfig))
    from polymodal.models.dual_encoder import load_trained_weights

    return load_trained_weights(model, folder, raw)
