"""`polymodal train captioner`: fit a Captioner on image-caption pairs (the formats `train contrastive` reads).

The image tower runs once: each photo's 7x7 grid is cached on disk (shared with the fusion encoder's cache), so an
epoch is the adapted MiniLM over [prefix ; caption] only. After each epoch the validation photos (a split by image
when no val_pairs is given) are captioned greedily and scored: CIDEr-D drives early stopping when pycocoevalcap is
installed (the `captions` extra), the validation loss otherwise. Training can continue from the built-in
`captioner` or an earlier run's folder (`model`), to fit it to your own captions. The best model is saved to RUN/model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from polymodal.data.jsonl import only_splits
from polymodal.data.pairs import PairSet, read_pair_sources, split_by_image
from polymodal.errors import PolymodalError
from polymodal.eval.captions import MIN_CIDER_PHOTOS
from polymodal.models.captioner import Captioner, CaptionerConfig, is_captioner_folder
from polymodal.models.inputs import as_paths, as_settings
from polymodal.progress import progress_bar
from polymodal.train.features import image_features, readable_pairs, readable_rows
from polymodal.train.guards import (
    AT_LEAST_1, FRACTION, check_ranges, check_run_folder, check_types, prepare_run_folder, refuse_unfreezing,
    refuse_lone_val_split, warn_of_shared_photos,
)
from polymodal.train.objectives import Objective
from polymodal.train.run_settings import (absolute_paths, another_run, check_same_run, check_same_validation_set,
                                          name_after_run, recipe_parts, recorded_settings, switched_validation,
                                          validation_record, write_train_config)
from polymodal.train.trainer import TrainConfig, Trainer, set_seed
from polymodal.trained_with import python_call
from polymodal.training_photos import TrainingPhotos

log = logging.getLogger(__name__)

CAPTION_TRAIN_DEFAULTS = {"early_stop_metric": "val/cider", "epochs": 5, "lr": 5e-4, "weight_decay": 0.01,
                          "warmup_steps": None, "warmup_cap": 100, "warmup_fraction": 0.5,
                          "patience": 2}


@dataclass
class CaptionRecipe:
    pairs: list[str]
    out: str
    val_pairs: list[str] = field(default_factory=list)
    val_fraction: float = 0.1  # without val_pairs: this fraction of the photos (with all their captions) validates
    model: str = "new"  # "new" (fresh adapters over the towers) or a captioner folder to continue from
    arch: CaptionerConfig = field(default_factory=CaptionerConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**CAPTION_TRAIN_DEFAULTS))
    batch_size: int = 32  # captions per step
    label_smoothing: float = 0.1
    val_images: int = 200  # photos captioned after each epoch for the validation scores (greedy decoding)
    split: str = ""  # JSON rows of these "split" values only (comma-separated), e.g. "train,restval"; "": every row
    val_split: str = ""  # the same for val_pairs

    def __post_init__(self) -> None:
        self.pairs, self.val_pairs = as_paths(self.pairs, "pairs"), as_paths(self.val_pairs, "val_pairs")
        self.arch = as_settings(self.arch, CaptionerConfig, "arch")
        self.train = as_settings(self.train, TrainConfig, "train", CAPTION_TRAIN_DEFAULTS)

    @classmethod
    def from_dict(cls, d: dict) -> "CaptionRecipe":
        arch, train, d = recipe_parts(cls, d, "captioner training ", CAPTION_TRAIN_DEFAULTS)
        return cls(arch=CaptionerConfig.from_dict(arch) if isinstance(arch, dict) else arch, train=train, **d)

    def validate(self) -> None:
        check_types(self)
        check_ranges(self, {"batch_size": AT_LEAST_1, "val_images": AT_LEAST_1, "label_smoothing": FRACTION,
                            "val_fraction": FRACTION})
        self.arch.validate()
        self.train.validate()
        refuse_unfreezing(self.train)
        refuse_lone_val_split(self)


class CaptionObjective(Objective):
    """Next-word cross-entropy of a batch (grids [B, 49, 1280], word pieces [B, L], mask [B, L])."""

    name = "caption"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def compute(self, model, batch) -> tuple[torch.Tensor, dict]:
        grid, ids, mask = batch
        loss = model.loss(grid, ids, mask, self.label_smoothing)
        return loss, {"caption_loss": float(loss.detach())}


class _Captions(torch.utils.data.Dataset):
    """One item per caption: (its photo's cached grid, the caption)."""

    def __init__(self, grids: np.ndarray, pairs: PairSet) -> None:
        self.grids, self.pairs = grids, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        return self.grids[self.pairs.caption_image[i]], self.pairs.pairs[i].caption


def _collate(model: Captioner):
    def collate(items):
        ids, mask = model.tokenize([c for _, c in items])
        return torch.from_numpy(np.stack([g for g, _ in items]).astype(np.float32)), ids, mask

    return collate


def _readable(model: Captioner, pairs: PairSet, progress: bool) -> tuple[PairSet, np.ndarray]:
    """The pairs whose photo reads, and the grids of those photos (cached)."""
    feats = image_features(model, pairs.images, progress=progress, skip_unreadable=True)
    rows = readable_rows(feats)
    if len(rows) == len(pairs.images):
        return pairs, feats[0]
    return readable_pairs(pairs, rows), feats[0][rows]


def warn_of_unknown_pieces(model: Captioner, captions: list[str]) -> None:
    """Words MiniLM's uncased English vocabulary lacks (most Chinese characters, emoji) are one [UNK] piece, which
    training fits and the captioner never writes (beam_search.UNK): say so, rather than train silently a model
    that drops those words."""
    from polymodal.models.beam_search import UNK

    unknown, total, example = 0, 0, None
    model._text[0]._warned_unknown = True  # this warning stands for the text tower's own (warn_once_if_unknown)
    for start in range(0, len(captions), 1024):
        chunk = captions[start : start + 1024]
        ids, mask = model.tokenize(chunk)
        unk = (ids == UNK) & mask
        unknown, total = unknown + int(unk.sum()), total + int(mask.sum()) - 2 * len(chunk)  # less [CLS], [SEP]
        if example is None and bool(unk.any()):
            example = chunk[int(unk.any(1).nonzero()[0, 0])]
    if total and unknown >= 0.01 * total:
        log.warning("%d of the captions' %d word pieces (%.0f%%) are unknown to the captioner's vocabulary (uncased, "
                    "mostly English; e.g. %r): it learns them as one [UNK] piece and never writes them", unknown, total,
                    100 * unknown / total, example)


def warn_of_long_captions(model: Captioner, captions: list[str]) -> None:
    """Captions longer than the captioner reads (max_caption_tokens word pieces, [CLS] and [SEP] included) lose their
    end, and it learns to stop there: say how many, and the flag that changes it. This replaces the text tower's
    general warning, which named no flag and also counted a caption that exactly fits as cut."""
    text = model._text[0]
    limit = model.config.max_caption_tokens
    cut, longest = 0, 0
    for start in range(0, len(captions), 1024):
        chunk = captions[start : start + 1024]
        if text._fast is not None:  # the bundled MiniLM: its encodings say what truncation left over
            lengths = [sum(e.attention_mask) + sum(sum(o.attention_mask) - 2 for o in e.overflowing)
                       for e in text._fast.tok.encode_batch(chunk)]
        else:
            lengths = [len(ids) for ids in text.tokenizer(chunk)["input_ids"]]  # not truncated: no max_length
        cut += sum(n > limit for n in lengths)
        longest = max([longest, *lengths])
    text._warned_cut = True  # said here, for all of them, or not at all
    if cut:
        log.warning("%d of the %d captions are longer than the captioner reads (max_caption_tokens %d word pieces, "
                    "[CLS] and [SEP] included; the longest has %d): their ends are cut, and it learns to stop there. "
                    "A new captioner reads more with --max-caption-tokens (arch.max_caption_tokens in Python; one "
                    "continued from --model keeps its own)",
                    cut, len(captions), limit, longest)


def caption_eval(model: Captioner, pairs: PairSet, grids: np.ndarray, limit: int, batch_size: int = 32,
                 progress: bool = False) -> dict:
    """Validation loss over every caption, and (with pycocoevalcap) BLEU-4 / CIDEr of greedy captions for the first
    `limit` photos. ``progress``: a "validating" bar (200 photos take minutes on 2 cores)."""
    collate, total, n = _collate(model), 0.0, 0
    data = _Captions(grids, pairs)
    metrics = has_caption_metrics()
    shown = range(min(limit, len(pairs.images)) if metrics else 0)
    with progress_bar(total=len(data) + len(shown), desc="validating", unit="item", disable=not progress,
                      leave=False) as bar:
        for start in range(0, len(data), batch_size):
            grid, ids, mask = collate([data[i] for i in range(start, min(len(data), start + batch_size))])
            total += float(model.loss(grid, ids, mask)) * len(ids)
            n += len(ids)
            bar.update(len(ids))
        hyps = []
        for start in range(0, len(shown), batch_size):
            chunk = torch.from_numpy(np.asarray(grids[start : start + batch_size][: len(shown) - start], np.float32))
            hyps += [model.decode(t) for t in model.generate(chunk, beam=1)]
            bar.update(len(chunk))
    out = {"val/loss": total / max(1, n), "val/neg_loss": -total / max(1, n)}  # neg_loss: higher is better
    if not metrics:
        return out
    from polymodal.eval.captions import caption_scores

    scores = caption_scores([pairs.captions_of(i) for i in shown], hyps)
    out["val/bleu4"] = scores["bleu4"]
    return out if scores["cider"] is None else out | {"val/cider": scores["cider"]}  # None: under 2 photos


def has_caption_metrics() -> bool:
    import importlib.util

    return importlib.util.find_spec("pycocoevalcap") is not None


def build_captioner(recipe: CaptionRecipe) -> Captioner:
    """A new captioner, or one to continue from: the built-in name or a folder written by `train captioner`."""
    if recipe.model in ("new", "", None):
        return Captioner(recipe.arch)
    import polymodal
    from polymodal.registry import MODELS, require_captioner, wrong_folder_hint

    if not (is_captioner_folder(recipe.model) or (recipe.model in MODELS and recipe.model != "lite")):
        raise PolymodalError(wrong_folder_hint(recipe.model)  # the run folder or its checkpoint: name RUN/model
                             or f"--model {recipe.model}: pass 'new', 'captioner' or a folder written by "
                             "`polymodal train captioner` (train_captioner in Python)")
    return require_captioner(polymodal.load(recipe.model), recipe.model).train()


def check_same_validation(out: Path, recipe: CaptionRecipe) -> None:
    """--resume: the epoch kept is the best validation score so far. --val-pairs given to a run that split its own
    validation photos (or validated on none) would train on the photos that validated and compare scores on other
    photos (or val/cider with the training loss); another --val-images scores CIDEr-D on another number of photos.
    Refused, as another --val-fraction is."""
    saved = recorded_settings(out)
    if not isinstance(saved, dict):
        return
    now = asdict(recipe) | absolute_paths(recipe, ("val_pairs",))
    changed = [(k, saved[k], now[k]) for k in ("val_images",) if k in saved and saved[k] != now[k]]
    changed += switched_validation(saved, "val_pairs", now["val_pairs"])
    if changed:
        raise another_run(out, changed)


def train_captioner(recipe: CaptionRecipe, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or continue training) a captioner; returns the best validation record plus timings."""
    t_start = time.perf_counter()
    from polymodal.train.distributed import refuse_torchrun

    refuse_torchrun('train captioner')
    recipe.validate()
    check_run_folder(recipe.out, resume, overwrite, recipe.train.epochs, recipe.train.patience)
    if recipe.train.early_stop_metric == "val/cider" and not has_caption_metrics():
        log.warning("pycocoevalcap is not installed (pip install 'polymodal[captions]'): the validation loss, not "
                    "CIDEr-D, chooses the epoch to keep")
        recipe.train.early_stop_metric = "val/neg_loss"
    set_seed(recipe.train.seed)
    with only_splits(recipe.split):
        pairs = read_pair_sources(recipe.pairs)
    if recipe.val_pairs:
        with only_splits(recipe.val_split, "--val-split"):
            val = read_pair_sources(recipe.val_pairs)
        warn_of_shared_photos(pairs.images, val.images, "--val-pairs")
    elif recipe.val_fraction > 0:
        pairs, val = split_by_image(pairs, recipe.val_fraction, recipe.train.seed)
    else:
        val = None
    model = build_captioner(recipe)
    name_after_run(model, recipe.out)
    validation = validation_record(val)  # before unreadable photos are dropped: what the data gives
    if resume:
        from polymodal.cli_caption import CAPTION_FLAGS  # a refusal names dropout a --config key (a `train vqa` flag)

        check_same_run(Path(recipe.out), recipe.arch, recipe.train,
                       val_fraction=None if recipe.val_pairs else recipe.val_fraction,
                       seed_draws_validation=not recipe.val_pairs and recipe.val_fraction > 0, flags=CAPTION_FLAGS)
        check_same_validation(Path(recipe.out), recipe)
        check_same_validation_set(Path(recipe.out), validation)
    pairs, grids = _readable(model, pairs, progress)
    warn_of_long_captions(model, [p.caption for p in pairs.pairs] + ([p.caption for p in val.pairs] if val else []))
    warn_of_unknown_pieces(model, [p.caption for p in pairs.pairs])
    loader = DataLoader(_Captions(grids, pairs), batch_size=recipe.batch_size, shuffle=True, collate_fn=_collate(model))
    eval_fn = None
    if val is not None and len(val):
        val, val_grids = _readable(model, val, progress)
        if recipe.train.early_stop_metric == "val/cider" and min(len(val.images), recipe.val_images) < MIN_CIDER_PHOTOS:
            log.warning("CIDEr-D needs at least %d validation photos: the validation loss chooses the epoch to keep",
                        MIN_CIDER_PHOTOS)
            recipe.train.early_stop_metric = "val/neg_loss"
        eval_fn = lambda m: caption_eval(m, val, val_grids, recipe.val_images, progress=progress)  # noqa: E731
    log.info("train: %d captions of %d photos; val: %d photos", len(pairs), len(pairs.images),
             len(val.images) if val is not None else 0)
    t_cached = time.perf_counter()
    trainer = Trainer(model, {"caption": (CaptionObjective(recipe.label_smoothing), 1.0, loader)}, recipe.train,
                      recipe.out, eval_fn, progress)
    out = Path(recipe.out)
    settings = asdict(recipe) | absolute_paths(recipe, ("pairs", "val_pairs"), ("model",)) | {
        "train_captions": len(pairs), "train_images": len(pairs.images), "validation": validation}
    # beside each saved model (with the validation photos that chose it): `eval` warns when it scores them
    photos = TrainingPhotos(pairs.images, recipe.model, val.images if eval_fn else (),
                            earlier=out / "model" if resume else None,
                            settings=settings, call=python_call(train_captioner, recipe, resume), trainer=trainer)
    prepare_run_folder(out, overwrite)  # after what reads --model's folder: --overwrite moves RUN/model aside
    best = trainer.fit(resume=resume, on_best=lambda m: photos.save(m, out / "model"),
                       on_start=lambda: write_train_config(out, settings),
                       score_start=recipe.model != "new")
    photos.finish(model, out / "model")
    return {**best, "cache_seconds": t_cached - t_start, "train_seconds": time.perf_counter() - t_cached,
            "epochs_run": trainer.epoch}
