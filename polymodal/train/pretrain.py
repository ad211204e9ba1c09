"""`polymodal train pretrain`: pretrain a fusion encoder on image-caption pairs with ITM, MLM and MRM.

Everything the frozen towers compute is cached once (``$POLYMODAL_CACHE/features``):

- image grid tokens per image (as for VQA, `polymodal.train.vqa.grid_features`);
- caption token states per caption (for ITM and MRM);
- MLM: ``mlm_variants`` fixed masked copies of each caption. Whole words (all their word pieces, about
  ``mlm_rate`` of the words, at least one; special tokens and punctuation never) are replaced by [MASK] at the
  text tower's INPUT and the states of that masked sentence are cached, with the original ids as targets. A
  masked position's state is computed without the word, so nothing leaks it (masking the states of the clean
  sentence would: every state has attended to the word). Epoch e trains on copy ``e % mlm_variants``.

ITM hard negatives are mined once before training with a contrastive model (``negatives``: "default", any
dual-encoder folder or embedding model name; "random" for uniform negatives): for each image, the ``hard_k``
captions of OTHER images it ranks highest, and for each caption the ``hard_k`` other images. A caption whose
text is identical to one of the image's own captions never counts as its negative. Each positive pair
(image, caption) trains with one negative caption for its image and one negative image for its caption, drawn
per epoch: from those lists with probability ``hard_fraction`` (default 0.5), else uniformly from all
non-matching ones (on Flickr8k the top few "negatives" often describe the image as well as its own captions do, and
an ITM head trained on hard negatives alone stays at chance; see benchmarks/pretrain_fusion.py). Validation
negatives are mined inside the validation split (image-disjoint) and validation reports both kinds separately.

MRM masks about ``mrm_rate`` of the grid cells of each row (at least one), drawn per epoch.

Validation (after every epoch, on a split by image unless ``val_pairs`` is given) reports ITM accuracy against
hard and against random negatives, MLM accuracy and loss, MRM loss, and ``val/score`` = minus the weighted sum
of the validation losses, which drives early stopping. The best model goes to RUN/model (an encoder without a
VQA head: fine-tune it with ``polymodal train vqa --model RUN/model``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from polymodal.cache import cache_key
from polymodal.cache import store_cached as _store
from polymodal.data.images import draft_size_of
from polymodal.data.jsonl import only_splits
from polymodal.data.pairs import PairSet, held_out_images, open_pair_image, read_pair_sources
from polymodal.data.tokenizer import TOKENIZE_CHUNK, overflowed, warn_once_of_cut
from polymodal.errors import PolymodalError
from polymodal.models.fusion_encoder import (
    FusionEncoder, FusionEncoderConfig, continued_folder, load_fusion_encoder,
)
from polymodal.models.inputs import as_parts, as_paths, as_settings
from polymodal.progress import progress_bar
from polymodal.train.caption_matches import CaptionMatches
from polymodal.train import hard_negatives
from polymodal.train.features import _load_cached, readable_pairs, readable_subset
from polymodal.train.guards import (
    FRACTION, FREEZE_UNDER_HEADS, NON_NEGATIVE, check_ranges, check_types, refuse_unfreezing, refuse_lone_val_split,
    freeze_parts, warn_of_shared_photos,
)
from polymodal.train.fusion_run import check_fusion_start, fit_and_save
from polymodal.train.pretrain_objectives import IGNORE, OBJECTIVES, PretrainBatch
from polymodal.train.run_settings import (
    absolute_paths,
    another_run,
    check_same_fusion,
    check_same_run,
    check_same_validation_set,
    name_after_run,
    recipe_parts,
    recorded_settings,
    validation_record,
)
from polymodal.train.token_states import StatesFill
from polymodal.train.trainer import TrainConfig, Trainer, set_seed
from polymodal.train.vqa import EpochShuffle, grid_features, layers_under_heads_train
from polymodal.trained_with import python_call
from polymodal.training_photos import TrainingPhotos

log = logging.getLogger(__name__)

KIND_SEED = {"itm": 1, "mlm": 2, "mrm": 3}  # separate random streams per objective
PRETRAIN_TRAIN_DEFAULTS = {"early_stop_metric": "val/score", "epochs": 10, "lr": 1e-3, "weight_decay": 0.05,
                           "warmup_steps": None, "warmup_cap": 30, "warmup_fraction": 0.5,
                           "patience": 3}


def parse_objectives(spec) -> dict[str, float]:
    """"itm:1,mlm:1,mrm:0.5" (a weight-less name weighs 1), a list of names or a dict -> {name: weight}."""
    example = "write e.g. itm:1,mlm:1,mrm:0.5, a list of names or {\"itm\": 1, \"mlm\": 0.5}"
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        parts = spec.split(",") if isinstance(spec, str) else list(spec) if isinstance(spec, Iterable) else None
        if parts is None or not all(isinstance(p, str) for p in parts):
            raise PolymodalError(f"objectives must name pretraining objectives, got {spec!r}; {example}")
        items = []
        for name, _, weight in (p.strip().partition(":") for p in parts if p.strip()):
            items.append((name.strip(), weight.strip() or 1.0))
    out: dict[str, float] = {}
    for name, weight in items:
        if name not in OBJECTIVES:
            raise PolymodalError(f"unknown pretraining objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        try:
            value = float(weight) if not isinstance(weight, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if value != value:
            raise PolymodalError(f"objective weight {weight!r} is not a number; {example}")
        if not value > 0 or value == math.inf:
            raise PolymodalError(f"objective {name} needs a positive weight, got {weight}")
        if name in out:  # "itm:1,itm:2" would train ITM at the last weight without a word
            raise PolymodalError(f"objective {name} is given twice ({out[name]:g} and {value:g}); name each once")
        out[name] = value
    if not out:
        raise PolymodalError("no pretraining objective given; pass e.g. --objectives itm:1,mlm:1,mrm:0.5 "
                             "(objectives={'itm': 1, 'mlm': 1, 'mrm': 0.5} in Python)")
    return out


@dataclass
class PretrainRecipe:
    pairs: list[str]
    out: str
    val_pairs: list[str] = field(default_factory=list)
    val_fraction: float = 0.1  # without val_pairs: this fraction of the images (with their captions) validates
    objectives: dict = field(default_factory=lambda: {"itm": 1.0, "mlm": 1.0, "mrm": 0.5})
    model: str = "new"  # "new" or a fusion-encoder folder to continue pretraining
    freeze: list[str] = field(default_factory=list)  # parts not trained (FusionEncoder.freeze names), e.g. fusion
    arch: FusionEncoderConfig = field(default_factory=lambda: FusionEncoderConfig(fusion="co_attention"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**PRETRAIN_TRAIN_DEFAULTS))
    batch_size: int = 64  # caption rows per objective per step (ITM adds two negatives per row)
    negatives: str = "default"  # contrastive model that mines ITM hard negatives; "random": uniform negatives
    hard_k: int = 8  # a hard negative is drawn from the hard_k most similar non-matching items
    hard_fraction: float = 0.5  # share of training negatives that are hard (the rest uniform); 1: all hard
    mlm_rate: float = 0.15
    mlm_variants: int = 2  # cached masked copies of each caption (epoch e uses copy e % mlm_variants)
    mrm_rate: float = 0.15
    mrm_target: str = ""  # "regress" the 1280-d cell features or "classify" their ImageNet distribution; "": the
    #                       arch's (or a continued model's) mrm_head, else regress
    zero_images: bool = False  # control runs: every image feature is zero (text-only baseline)
    workers: int = 0
    split: str = ""  # JSON rows of these "split" values only (comma-separated), e.g. "train,restval"; "": every row
    val_split: str = ""  # the same for val_pairs

    def __post_init__(self) -> None:  # from Python, nested settings may come as dicts (as in a --config file)
        self.pairs, self.val_pairs = as_paths(self.pairs, "pairs"), as_paths(self.val_pairs, "val_pairs")  # one file may come bare
        self.freeze = as_parts(self.freeze)
        self.arch = as_settings(self.arch, FusionEncoderConfig, "arch", {"fusion": "co_attention"})
        self.train = as_settings(self.train, TrainConfig, "train", PRETRAIN_TRAIN_DEFAULTS)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainRecipe":
        arch, train, d = recipe_parts(cls, d, "pretraining ", PRETRAIN_TRAIN_DEFAULTS, ("pairs", "val_pairs"))
        if isinstance(arch, dict):
            arch = FusionEncoderConfig.from_dict({"fusion": "co_attention", **arch})
        if "objectives" in d:
            d["objectives"] = parse_objectives(d["objectives"])
        return cls(arch=arch, train=train, **d)

    def validate(self) -> None:
        self.objectives = parse_objectives(self.objectives)
        check_types(self)
        check_ranges(self, {"workers": NON_NEGATIVE, "val_fraction": FRACTION})
        self.train.validate()
        refuse_unfreezing(self.train)
        refuse_lone_val_split(self)
        if not 0 < self.mlm_rate <= 1 or not 0 < self.mrm_rate <= 1:
            raise PolymodalError("mlm_rate and mrm_rate must be in (0, 1]")
        if not 0 <= self.hard_fraction <= 1:
            raise PolymodalError(f"hard_fraction must be in [0, 1], got {self.hard_fraction}")
        if self.mlm_variants < 1 or self.hard_k < 1 or self.batch_size < 1:
            raise PolymodalError("mlm_variants, hard_k and batch_size must be at least 1")
        if self.mrm_target not in ("", "regress", "classify"):
            raise PolymodalError(f"mrm_target must be 'regress' or 'classify', got {self.mrm_target!r}")


# -- data: pairs, masks, cached features ----------------------------------------------------------------------------


def read_pairs(sources: Sequence[str | Path]) -> PairSet:
    """One PairSet from several pair sources (JSONL, CSV, caption folders, shards)."""
    if not sources:
        raise PolymodalError("no pair source given; pass --pairs FILE.jsonl (pairs= in Python)")
    return read_pair_sources(sources)


def split_pairs_by_image(pairs: PairSet, fraction: float, seed: int = 0) -> tuple[PairSet, PairSet]:
    """Hold out ``fraction`` of the images with all their captions: no validation image is seen in training."""
    train, val = held_out_images(pairs.images, fraction, seed, "pass --val-pairs")
    return pairs.subset(train), pairs.subset(val)


def maskable_words(tokens: Sequence[str], special: set[str]) -> list[list[int]]:
    """Word-piece tokens -> the positions of each maskable whole word (a piece plus its "##" continuations);
    special tokens and words without a letter or digit (punctuation) are not maskable."""
    words: list[list[int]] = []
    for i, tok in enumerate(tokens):
        if tok in special:
            continue
        if tok.startswith("##") and words and words[-1][-1] == i - 1:
            words[-1].append(i)
        else:
            words.append([i])
    return [w for w in words if any(ch.isalnum() for ch in "".join(tokens[i].lstrip("#") for i in w))]


def whole_word_mask(tokens: Sequence[str], rate: float, rng: np.random.Generator, special: set[str]) -> list[int]:
    """Positions to mask: ``max(1, round(rate * words))`` whole words drawn at random (none if no word)."""
    words = maskable_words(tokens, special)
    if not words:
        return []
    n = max(1, round(rate * len(words)))
    chosen = rng.choice(len(words), size=min(n, len(words)), replace=False)
    return sorted(i for w in chosen for i in words[int(w)])


def mask_token_ids(ids: Sequence[int], positions: Sequence[int], mask_id: int) -> tuple[list[int], list[int]]:
    """-> (input ids with [MASK] at ``positions``, targets: the original id there and IGNORE elsewhere)."""
    masked, targets = list(ids), [IGNORE] * len(ids)
    for p in positions:
        targets[p] = int(ids[p])
        masked[p] = int(mask_id)
    return masked, targets


def region_masks(rows: int, cells: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``[rows, cells]`` bool: each row masks ``max(1, round(rate * cells))`` cells drawn at random."""
    n = min(cells, max(1, round(rate * cells)))
    order = np.argsort(rng.random((rows, cells)), axis=1)[:, :n]
    out = np.zeros((rows, cells), dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


def tokenize_captions(model: FusionEncoder, captions: Sequence[str]) -> list[list[int]]:
    """Word-piece ids with [CLS]/[SEP], truncated to the model's max_question_tokens (what text_cache_input sees)."""
    tok = model.text_tower.tokenizer
    limit = model.config.max_question_tokens
    ids, cut = [], 0
    for start in range(0, len(captions), TOKENIZE_CHUNK):  # a chunk's encodings at a time, not the whole list's
        batch = tok(list(captions[start : start + TOKENIZE_CHUNK]), truncation=True, max_length=limit)
        chunk = overflowed(getattr(batch, "encodings", None))
        if chunk is None:  # a slow tokenizer says nothing: a caption that fills the limit counts as cut, as towers do
            chunk = sum(len(row) >= limit for row in batch["input_ids"])
        ids += batch["input_ids"]
        cut += chunk
    # said once per model, as the towers say it: cut silently, a long caption trained ITM and MLM on its first words
    warn_once_of_cut(model, cut, limit, "fusion encoder")
    return ids


@torch.inference_mode()
def _encode_ids(model: FusionEncoder, rows: Sequence[Sequence[int]], batch_size: int = 128, progress: bool = True,
                desc: str = "caching caption tokens", path=None) -> tuple[np.ndarray, np.ndarray]:
    """Word-piece id rows -> token states ``[N, W, 384]`` float16 (padding zeroed; written to the cache file at
    ``path`` batch by batch, in memory without one) and lengths ``[N]``; rows are encoded in order of length so
    batches carry little padding."""
    lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
    width = max(1, int(lengths.max())) if len(rows) else 1
    states = StatesFill(path, len(rows), width, model.text_tower.dim)
    order = np.argsort(lengths, kind="stable")
    try:
        for s in progress_bar(range(0, len(rows), batch_size), desc=desc, disable=not progress):
            idx = order[s : s + batch_size]
            w = int(lengths[idx].max())
            ids = torch.zeros(len(idx), w, dtype=torch.long)
            attn = torch.zeros(len(idx), w, dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : lengths[i]] = torch.as_tensor(rows[i])
                attn[j, : lengths[i]] = 1
            states.write(idx, model.text_states(ids, attn).numpy())
    except BaseException:  # an error or an interrupt: no temporary file left behind
        states.discard()
        raise
    return states.finish(), lengths


def caption_features(model: FusionEncoder, captions: Sequence[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token states ``[C, L, 384]`` float16 and lengths ``[C]`` of the captions (cached)."""
    key = cache_key(model.text_cache_signature, "captions", *captions)
    path, states = _load_cached(key, "pretrain-text")
    len_path, lengths = _load_cached(key, "pretrain-textlen")
    if states is not None and lengths is not None:
        return states, lengths
    states, lengths = _encode_ids(model, tokenize_captions(model, captions), progress=progress, path=path)
    return states, _store(len_path, lengths)


def masked_caption_ids(model: FusionEncoder, captions: Sequence[str], variants: int, rate: float,
                       seed: int) -> tuple[list[list[int]], np.ndarray]:
    """``variants`` masked copies of every caption (row ``v * C + c``): masked ids and targets ``[V*C, W]``
    (IGNORE where nothing is predicted and as padding). Copy v of caption c depends only on (seed, v, c)."""
    tok = model.text_tower.tokenizer
    special = set(tok.all_special_tokens)
    ids = tokenize_captions(model, captions)
    width = max((len(r) for r in ids), default=1)
    rows, targets = [], np.full((variants * len(ids), width), IGNORE, dtype=np.int64)
    for v in range(variants):
        for c, row in enumerate(ids):
            rng = np.random.default_rng([seed, v, c])
            positions = whole_word_mask(tok.convert_ids_to_tokens(row), rate, rng, special)
            masked, target = mask_token_ids(row, positions, tok.mask_token_id)
            rows.append(masked)
            targets[v * len(ids) + c, : len(row)] = target
    return rows, targets


def masked_caption_features(model: FusionEncoder, captions: Sequence[str], variants: int = 2, rate: float = 0.15,
                            seed: int = 0, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MLM inputs: token states of the masked sentences ``[V*C, L, 384]`` float16, lengths ``[V*C]`` and
    targets ``[V*C, L]`` (original word-piece ids at masked positions, IGNORE elsewhere); cached."""
    key = cache_key(model.text_cache_signature, "mlm-wholeword-v1", variants, rate, seed, *captions)
    paths = [_load_cached(key, kind) for kind in ("pretrain-mlm", "pretrain-mlmlen", "pretrain-mlmtarget")]
    if all(a is not None for _, a in paths):
        return tuple(a for _, a in paths)  # type: ignore[return-value]
    rows, targets = masked_caption_ids(model, captions, variants, rate, seed)
    states, lengths = _encode_ids(model, rows, progress=progress, desc="caching masked captions", path=paths[0][0])
    return (states, _store(paths[1][0], lengths),
            _store(paths[2][0], targets[:, : states.shape[1]]))


# -- hard negatives -------------------------------------------------------------------------------------------------


def _mineable(k: int, available: int) -> int:
    """k clipped to the fewest non-positives of any query (``available``), which must be 1+."""
    if available < 1:
        raise PolymodalError("some query has no non-matching item to mine a negative from (need 2+ images)")
    return min(k, available)


@torch.inference_mode()
def contrastive_embeddings(miner, images: Sequence, captions: Sequence[str], progress: bool = True,
                           batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised (image ``[N, D]``, caption ``[C, D]``) embeddings of a contrastive model; a dual encoder's
    frozen-tower features come from (and go to) the feature cache."""
    from polymodal.models.base import l2_normalize

    if hasattr(miner, "image_from_cache") and hasattr(miner, "text_from_pooled") and getattr(miner, "text_frozen", False):
        from polymodal.train.features import image_features, text_features

        miner.eval()
        feats = image_features(miner, list(images), progress=progress)[0]
        pooled = text_features(miner, list(captions), progress=progress)
        img = torch.cat([l2_normalize(miner.image_from_cache(torch.from_numpy(np.array(feats[i : i + batch_size], np.float32))))
                         for i in range(0, len(images), batch_size)])
        txt = torch.cat([l2_normalize(miner.text_from_pooled(torch.from_numpy(np.array(pooled[i : i + batch_size], np.float32))))
                         for i in range(0, len(captions), batch_size)])
        return img.numpy(), txt.numpy()
    # a model's encode_image reads files, not "<shard>#<member>" references: open the images here, a batch at a time
    img = [miner.encode_image([open_pair_image(x, draft_size_of(miner)) for x in images[i : i + batch_size]])
           for i in range(0, len(images), batch_size)]
    return np.concatenate(img), miner.encode_text(list(captions))


def mine_pairs(image_emb: np.ndarray, caption_emb: np.ndarray, pairs: PairSet, k: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (per image: its ``k`` most similar captions of other images ``[N, k]``, per caption: its ``k`` most
    similar other images ``[C, k]``). Scored and masked a block of rows at a time: the whole [N, C] scores and
    positives were ~6 B a cell (~12 GB at 100k captions, ~400 GB at 600k); both directions come from one pass
    over the product (hard_negatives.mine)."""
    matches, n, c = CaptionMatches.of(pairs), len(image_emb), len(caption_emb)
    if (n, c) != (matches.images, len(matches.text_id)):  # the old whole-matrix check's words (else a numpy error)
        raise PolymodalError(f"similarity {(n, c)} and positive {(matches.images, len(matches.text_id))} shapes differ")
    k_captions = _mineable(k, c - int(matches.captions_per_image.max()) if n else 0)
    k_images = _mineable(k, n - int(matches.images_per_caption.max()) if c else 0)
    return hard_negatives.mine(image_emb, caption_emb, matches, k_captions, k_images)


# -- datasets ---------------------------------------------------------------------------------------------------------


@dataclass
class CaptionData:
    """Captions over cached features (one split). ``hard_captions`` / ``hard_images`` are None for random
    negatives; ``mlm`` is (states, lengths, targets) of the masked copies, or None."""

    pairs: PairSet
    feats: np.ndarray  # [N, T, F]
    states: np.ndarray  # [C, L, 384]
    lengths: np.ndarray  # [C]
    mlm: tuple | None = None
    hard_captions: np.ndarray | None = None  # [N, k]
    hard_images: np.ndarray | None = None  # [C, k]

    @cached_property
    def matches(self) -> CaptionMatches:
        return CaptionMatches.of(self.pairs)


def _states(states: np.ndarray, lengths: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    lens = np.asarray(lengths)[idx]
    width = max(1, int(lens.max())) if len(idx) else 1
    order = np.argsort(idx, kind="stable")  # memory maps read fastest in order
    out = np.empty((len(idx), width, states.shape[2]), dtype=np.float32)
    out[order] = states[np.asarray(idx)[order], :width]
    mask = torch.arange(width)[None, :] < torch.from_numpy(lens.astype(np.int64))[:, None]
    return torch.from_numpy(out), mask


class CaptionRows(Dataset):
    """Item = one caption row; `collate` builds a `PretrainBatch` for ``kind`` ("itm", "mlm" or "mrm"). The
    random choices (negatives, region masks) depend only on (seed, epoch, the batch's captions)."""

    def __init__(self, data: CaptionData, kind: str, seed: int = 0, hard: float = 1.0, mrm_rate: float = 0.15,
                 zero_images: bool = False) -> None:
        if kind not in OBJECTIVES:
            raise PolymodalError(f"unknown objective {kind!r}")
        if kind == "mlm" and data.mlm is None:
            raise PolymodalError("MLM rows need the masked caption cache")
        self.data, self.kind, self.seed, self.epoch = data, kind, seed, 0
        self.hard = float(hard) if data.hard_captions is not None else 0.0  # share of hard ITM negatives
        self.mrm_rate, self.zero_images = mrm_rate, zero_images
        self.sampler = EpochShuffle(len(data.pairs), seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.data.pairs)

    def __getitem__(self, i: int) -> int:
        return i

    def _rng(self, captions: np.ndarray) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(captions.min()), len(captions), KIND_SEED[self.kind]])

    def _images(self, row_images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        used, local = np.unique(row_images, return_inverse=True)
        feats = np.asarray(self.data.feats[used], dtype=np.float32)
        if self.zero_images:
            feats = np.zeros_like(feats)
        return torch.from_numpy(feats), torch.from_numpy(local.reshape(-1).astype(np.int64))

    def _negatives(self, captions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(a negative caption for each caption's image, a negative image for each caption): each one hard
        (from the mined lists) with probability ``self.hard``, else uniform over the non-matching ones."""
        if self.hard >= 1:
            return self._hard(captions, rng)
        neg_caption, neg_image = self._uniform(captions, rng)
        if self.hard > 0:
            hard_caption, hard_image = self._hard(captions, rng)
            pick = rng.random((2, len(captions))) < self.hard
            neg_caption = np.where(pick[0], hard_caption, neg_caption)
            neg_image = np.where(pick[1], hard_image, neg_image)
        return neg_caption, neg_image

    def _hard(self, captions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        d, owner = self.data, self.data.pairs.caption_image
        k1, k2 = d.hard_captions.shape[1], d.hard_images.shape[1]
        neg_caption = d.hard_captions[owner[captions], rng.integers(k1, size=len(captions))]
        neg_image = d.hard_images[captions, rng.integers(k2, size=len(captions))]
        return neg_caption, neg_image

    def _uniform(self, captions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        d, owner = self.data, self.data.pairs.caption_image
        matches = d.matches
        neg_caption, neg_image = [], []
        for c in captions:
            i = owner[c]
            if matches.captions_per_image[i] == len(owner) or matches.images_per_caption[c] == len(d.pairs.images):
                raise PolymodalError("need captions of at least 2 different images for ITM negatives")
            while True:
                x = int(rng.integers(len(owner)))
                if not matches.matches(i, x):
                    break
            while True:
                j = int(rng.integers(len(d.pairs.images)))
                if not matches.matches(j, c):
                    break
            neg_caption.append(x)
            neg_image.append(j)
        return np.asarray(neg_caption, np.int64), np.asarray(neg_image, np.int64)

    def collate(self, items: list[int]) -> PretrainBatch:
        captions = np.asarray(items, dtype=np.int64)
        owner = self.data.pairs.caption_image
        rng = self._rng(captions)
        if self.kind == "itm":
            neg_caption, neg_image = self._negatives(captions, rng)
            row_images = np.concatenate([owner[captions], owner[captions], neg_image])
            texts = np.concatenate([captions, neg_caption, captions])
            images, row_image = self._images(row_images)
            states, mask = _states(self.data.states, self.data.lengths, texts)
            labels = torch.cat([torch.ones(len(captions)), torch.zeros(2 * len(captions))])
            return PretrainBatch(row_image, images, states, mask, itm_labels=labels)
        images, row_image = self._images(owner[captions])
        if self.kind == "mlm":
            m_states, m_len, m_targets = self.data.mlm
            variants = m_states.shape[0] // len(self.data.pairs)
            rows = (self.epoch % variants) * len(self.data.pairs) + captions
            states, mask = _states(m_states, m_len, rows)
            targets = torch.from_numpy(np.asarray(m_targets[rows, : states.shape[1]], dtype=np.int64))
            return PretrainBatch(row_image, images, states, mask, mlm_targets=targets)
        states, mask = _states(self.data.states, self.data.lengths, captions)
        regions = torch.from_numpy(region_masks(len(captions), self.data.feats.shape[1], self.mrm_rate, rng))
        return PretrainBatch(row_image, images, states, mask, region_mask=regions)


# -- building the data and evaluating ----------------------------------------------------------------------------


def encode_split(model: FusionEncoder, pairs: PairSet, objectives: Sequence[str], recipe: PretrainRecipe,
                 miner=None, progress: bool = True) -> CaptionData:
    """Cache a split's features (and mine its hard negatives with ``miner`` when ITM is trained)."""
    rows, feats = readable_subset(grid_features(model, pairs.images, progress=progress, skip_unreadable=True))
    pairs = readable_pairs(pairs, rows)  # an unreadable image (and its captions) is left out, with one warning
    data = CaptionData(pairs, feats, *caption_features(model, pairs.captions, progress=progress))
    if "mlm" in objectives:
        data.mlm = masked_caption_features(model, pairs.captions, recipe.mlm_variants, recipe.mlm_rate,
                                           recipe.train.seed, progress=progress)
    if "itm" in objectives and miner is not None:
        img, txt = contrastive_embeddings(miner, pairs.images, pairs.captions, progress=progress)
        data.hard_captions, data.hard_images = mine_pairs(img, txt, pairs, recipe.hard_k)
    return data


def evaluation_sets(data: CaptionData, objectives: Sequence[str], seed: int = 0, mrm_rate: float = 0.15,
                    zero_images: bool = False) -> dict[str, CaptionRows]:
    """Fixed validation row sets: "itm_hard" (when mined), "itm_random", "mlm" (masked copy 0), "mrm"."""
    sets = {}
    for kind in objectives:
        if kind == "itm":
            if data.hard_captions is not None:
                sets["itm_hard"] = CaptionRows(data, "itm", seed, hard=1.0, zero_images=zero_images)
            sets["itm_random"] = CaptionRows(data, "itm", seed, hard=0.0, zero_images=zero_images)
        else:
            sets[kind] = CaptionRows(data, kind, seed, mrm_rate=mrm_rate, zero_images=zero_images)
    return sets


@torch.no_grad()
def evaluate(model: FusionEncoder, sets: dict[str, CaptionRows], weights: dict[str, float] | None = None,
             batch_size: int = 128, prefix: str = "val/") -> dict:
    """Row-weighted mean metrics of each set (ITM accuracy/loss against hard and random negatives, MLM accuracy
    and loss over masked words, MRM loss) and ``score`` = minus the weighted sum of the losses."""
    model.eval()
    out: dict[str, float] = {}
    for name, rows in sets.items():
        kind = rows.kind
        objective = OBJECTIVES[kind]()
        totals: dict[str, float] = {}
        count = 0
        for s in range(0, len(rows), batch_size):
            batch = rows.collate(list(range(s, min(len(rows), s + batch_size))))
            n = int((batch.mlm_targets != IGNORE).sum()) if kind == "mlm" else len(batch.row_image)
            _, metrics = objective.compute(model, batch)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v * n
            count += n
        suffix = name[len(kind):]  # "_hard" / "_random" for ITM
        for k, v in totals.items():
            out[f"{prefix}{k}{suffix}"] = v / max(1, count)
    if weights:
        loss_of = {"itm": out.get(f"{prefix}itm_loss_hard", out.get(f"{prefix}itm_loss_random")),
                   "mlm": out.get(f"{prefix}mlm_loss"), "mrm": out.get(f"{prefix}mrm_loss")}
        out[prefix + "score"] = -sum(w * loss_of[k] for k, w in weights.items() if loss_of.get(k) is not None)
    return out


def load_miner(name: str):
    import polymodal

    miner = polymodal.load(name)
    if not hasattr(miner, "encode_image") or not hasattr(miner, "encode_text"):
        raise PolymodalError(f"model {name!r} does not embed images and texts; pass negatives: default, a dual-encoder "
                             "folder, or random")
    return miner


def build_model(recipe: PretrainRecipe, resume: bool = False) -> FusionEncoder:
    """The model to pretrain: new (heads for the objectives), or continued from a folder or a built-in name.
    mrm_target must agree with the MRM head the arch or the continued model has; a resumed run is rebuilt as it
    was recorded (runs from before stop 31 recorded mrm_target "regress" beside any head), so it is not checked."""
    names = recipe.objectives
    if recipe.model == "new":
        arch = recipe.arch
        if not resume:
            _check_mrm_target(recipe.mrm_target, arch.mrm_head, "arch mrm_head")
        model = FusionEncoder(replace(arch, itm_head=arch.itm_head or "itm" in names,
                                      mlm_head=arch.mlm_head or "mlm" in names,
                                      mrm_head=arch.mrm_head or (recipe.mrm_target or "regress" if "mrm" in names
                                                                 else "")))
        recipe.arch = model.config  # what was built is what train_config.json records
        return model
    model = load_fusion_encoder(continued_folder(recipe.model, "pretrain"))  # a folder, or a built-in name
    # an ITM head this run adds starts random: frozen it would stay random, and the model as it came (epoch 0,
    # kept when no epoch beats it) is saved without it, as `train vqa` does with the ITM head --itm-weight adds
    model.fresh_itm_head = "itm" in names and model.itm is None
    if model.fresh_itm_head and "itm" in recipe.freeze:
        raise PolymodalError(f"--freeze itm: {recipe.model} has no ITM head, so this run adds one that starts random "
                             "and would stay random; drop itm from --freeze (freeze= in Python)")
    if "itm" in names:
        model.add_itm_head()
    missing = [n for n, head in (("mlm", model.mlm_transform), ("mrm", model.mrm)) if n in names and head is None]
    if missing:
        raise PolymodalError(f"{recipe.model} has no {' or '.join(missing)} head; pretrain a new model for them")
    if recipe.mrm_target and not resume:
        _check_mrm_target(recipe.mrm_target, model.config.mrm_head, f"{recipe.model}'s MRM head")
    recipe.arch = model.config
    return model


def check_same_validation(out: Path, recipe: PretrainRecipe) -> None:
    """--resume of a validated run: the objective weights make val/score (which picks RUN/model and stops early),
    the MLM / MRM rates draw the validation masks and hard_k / negatives mine the validation negatives. Another
    value would compare the new epochs' score with the best one under another definition (a lower weight "improves"
    at once), as another --seed would: refused the same way."""
    saved = recorded_settings(out)
    if not isinstance(saved, dict):
        return
    now = asdict(recipe) | absolute_paths(recipe, (), ("negatives",))
    names = recipe.objectives
    # hard_k mines nothing with random negatives (either side random: --negatives itself is reported as changed)
    mined = now["negatives"] != "random" and saved.get("negatives") != "random"
    keys = ["objectives", "zero_images", *(["mlm_rate"] if "mlm" in names else []),
            *(["mrm_rate"] if "mrm" in names else []),
            *(["negatives", *(["hard_k"] if mined else [])] if "itm" in names else [])]
    changed = [(k, saved[k], now[k]) for k in keys if k in saved and saved[k] != now[k]]
    if changed:
        raise another_run(out, changed)


def _check_mrm_target(target: str, head: str, what: str) -> None:
    if target and head and target != head:
        raise PolymodalError(f"mrm_target {target!r} contradicts {what} ({head!r}); leave mrm_target out (it names "
                             "the same thing: what masked grid cells predict), or pretrain a new model")


def train_pretrain(recipe: PretrainRecipe, resume: bool = False, progress: bool = True,
                   overwrite: bool = False) -> dict:
    """Pretrain (or continue pretraining) a fusion encoder; returns the best validation metrics plus timings."""
    t_start = time.perf_counter()
    check_fusion_start(recipe, "pretrain", resume, overwrite)
    set_seed(recipe.train.seed)
    with only_splits(recipe.split):
        pairs = read_pairs(recipe.pairs)
    if recipe.val_pairs:
        with only_splits(recipe.val_split, "--val-split"):
            train_pairs, val_pairs = pairs, read_pairs(recipe.val_pairs)
        warn_of_shared_photos(train_pairs.images, val_pairs.images, "--val-pairs")
    elif recipe.val_fraction > 0:
        train_pairs, val_pairs = split_pairs_by_image(pairs, recipe.val_fraction, recipe.train.seed)
    else:
        train_pairs, val_pairs = pairs, None
    if len(train_pairs.images) < 2 and "itm" in recipe.objectives:
        raise PolymodalError("ITM needs captions of at least 2 training images")
    if val_pairs is not None and len(val_pairs.images) < 2 and "itm" in recipe.objectives:
        where = f"--val-pairs {recipe.val_pairs}" if recipe.val_pairs else \
            f"the validation split ({recipe.val_fraction:g} of {len(pairs.images)} images)"
        raise PolymodalError(f"ITM validation needs captions of at least 2 images and {where} has "
                             f"{len(val_pairs.images)}; pass --val-pairs FILE with more images or more pairs")
    if resume and recipe.model == "new":  # a continued model's fusion comes from its folder, not from arch
        check_same_fusion(Path(recipe.out), recipe.arch)
    model = build_model(recipe, resume)
    name_after_run(model, recipe.out)
    freeze_parts(model, recipe.freeze, recipe.model)
    if model.vqa_head is not None and layers_under_heads_train(model):
        log.warning("%s's VQA head does not train in pretraining but the layers under it do, so its answers drift "
                    "(easy-vqa: test accuracy 1.000 -> 0.997 after 10 epochs of ITM); fine-tune it again with "
                    "`polymodal train vqa --model RUN/model` (train_vqa with model='RUN/model' in Python), or %s",
                    recipe.model, FREEZE_UNDER_HEADS)
    validation = validation_record(val_pairs)
    if resume:
        check_same_run(Path(recipe.out), recipe.arch, recipe.train, freeze=recipe.freeze,
                       val_fraction=None if recipe.val_pairs else recipe.val_fraction,
                       seed_draws_validation=bool(recipe.val_pairs) or recipe.val_fraction > 0)  # masks too
        if recipe.val_pairs or recipe.val_fraction > 0:
            check_same_validation(Path(recipe.out), recipe)
        check_same_validation_set(Path(recipe.out), validation)
    names = list(recipe.objectives)
    log.info("pretrain %s on %d captions of %d images; val: %d captions", names, len(train_pairs),
             len(train_pairs.images), len(val_pairs) if val_pairs else 0)

    miner = load_miner(recipe.negatives) if "itm" in names and recipe.negatives != "random" else None
    if "itm" in names and recipe.negatives == "random" and recipe.hard_fraction not in (0.0, 0.5):  # 0.5: default
        log.warning("hard_fraction %g has no effect with negatives 'random': no hard negatives are mined, all are "
                    "uniform; name a miner (--negatives default; negatives='default' in Python) for hard ones",
                    recipe.hard_fraction)
    train = encode_split(model, train_pairs, names, recipe, miner, progress)
    val = encode_split(model, val_pairs, names, recipe, miner, progress) if val_pairs is not None else None
    if val is not None and val.hard_images is not None and recipe.hard_k >= len(val.pairs.images) - 1:
        # the hard captions are drawn from the other images' captions, several an image: often still mined
        captions_too = recipe.hard_k >= len(val.pairs) - int(val.matches.captions_per_image.min())
        what = ("val/itm_*_hard measure what val/itm_*_random do" if captions_too else
                "val/itm_*_hard's image negatives are uniform (only its caption negatives are mined)")
        log.warning("validation holds %d images and hard_k is %d: each caption's mined 'hard' images are all the "
                    "others, so %s; hold out more images for a harder validation (--val-fraction, --val-pairs; "
                    "val_fraction, val_pairs in Python)",
                    len(val.pairs.images), recipe.hard_k, what)
    del miner
    t_cached = time.perf_counter()

    seed = recipe.train.seed
    loaders = {}
    for kind in names:
        rows = CaptionRows(train, kind, seed, hard=recipe.hard_fraction, mrm_rate=recipe.mrm_rate,
                           zero_images=recipe.zero_images)
        loaders[kind] = (OBJECTIVES[kind](), recipe.objectives[kind],
                         DataLoader(rows, batch_size=recipe.batch_size, sampler=rows.sampler, collate_fn=rows.collate,
                                    num_workers=recipe.workers))
    eval_fn = None
    if val is not None:
        sets = evaluation_sets(val, names, seed, recipe.mrm_rate, recipe.zero_images)
        eval_fn = lambda m: evaluate(m, sets, recipe.objectives)  # noqa: E731

    trainer = Trainer(model, loaders, recipe.train, recipe.out, eval_fn, progress)  # refuses an empty epoch
    out = Path(recipe.out)
    settings = asdict(recipe) | absolute_paths(recipe, ("pairs", "val_pairs"), ("model", "negatives")) | {
        "train_captions": len(train.pairs), "train_images": len(train.pairs.images),
        "val_captions": len(val.pairs) if val else 0, "validation": validation}
    # beside each saved model (with the validation photos that chose it): `eval` warns when it scores them
    photos = TrainingPhotos(train.pairs.images, recipe.model, val.pairs.images if val is not None else (),
                            earlier=out / "model" if resume else None,
                            settings=settings, call=python_call(train_pretrain, recipe, resume), trainer=trainer)
    best = fit_and_save(trainer, photos, settings, resume, overwrite, score_start=recipe.model != "new")
    t_end = time.perf_counter()
    return {**best, "cache_seconds": t_cached - t_start, "train_seconds": t_end - t_cached, "epochs_run": trainer.epoch}
