"""`polymodal train contrastive`: fine-tune a dual encoder on your own image-caption pairs.

Frozen towers are run once (features cached on disk, several augmented views per image if asked); every epoch then
trains only the heads and any unfrozen blocks on the cached tensors. Writes RUN/model (loadable with
polymodal.load), RUN/checkpoint.pt (resume), RUN/metrics.jsonl, RUN/tensorboard, RUN/train_config.json.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from polymodal.data.augment import Augment
from polymodal.data.jsonl import only_splits
from polymodal.data.negatives import HARD_NEGATIVE_MODES, negatives_per_caption
from polymodal.data.pairs import PairSet, read_pair_sources, split_by_image
from polymodal.errors import PolymodalError
from polymodal.eval.retrieval import retrieval_metrics
from polymodal.eval.zeroshot import read_labelled_images
from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig, is_dual_encoder_folder, load_dual_encoder
from polymodal.models.inputs import as_paths, as_settings
from polymodal.registry import wrong_folder_hint
from polymodal.train import distributed
from polymodal.train.features import (
    CachedPairDataset, RowSubset, TextRows, collate_cached, image_features, readable_pairs, readable_rows,
    text_features,
)
from polymodal.train.guards import (
    AT_LEAST_1, FRACTION, NON_NEGATIVE, check_ranges, check_run_folder, check_types, prepare_run_folder,
    refuse_lone_val_split, warn_of_shared_photos,
)
from polymodal.train.objectives import ContrastiveObjective
from polymodal.train.run_settings import (absolute_paths, check_same_run, check_same_validation_set, name_after_run,
                                          recipe_parts, validation_record, write_train_config)
from polymodal.train.trainer import TrainConfig, Trainer, set_seed
from polymodal.trained_with import python_call
from polymodal.training_photos import TrainingPhotos

log = logging.getLogger(__name__)


@dataclass
class ContrastiveRecipe:
    pairs: list[str]
    out: str
    val_pairs: list[str] = field(default_factory=list)
    val_fraction: float = 0.1  # used when no val_pairs are given: split off by image
    model: str = "lite"  # "lite" (fresh heads over the lite towers) or a dual-encoder folder to continue from
    arch: DualEncoderConfig = field(default_factory=DualEncoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int = 256
    gradcache_chunk: int = 0  # >0: GradCache with this chunk size (contrastive batch beyond memory)
    views: int = 1  # cached image views per image: 1 = centre crop only, >1 adds augmented views
    workers: int = 0
    zeroshot_labels: str = ""  # JSONL of {"image", "label"}: zero-shot accuracy as a hook after every epoch
    # NegCLIP hard-negative captions in the image->text softmax: "data" = the pairs' own "negatives" (if any),
    # "swap" = those, else two word-swapped copies of the caption (polymodal.data.negatives), "none" = off
    hard_negatives: str = "data"
    split: str = ""  # JSON rows of these "split" values only (comma-separated), e.g. "train,restval"; "": every row
    val_split: str = ""  # the same for val_pairs

    def __post_init__(self) -> None:  # from Python, nested settings may come as dicts (as in a --config file)
        self.pairs, self.val_pairs = as_paths(self.pairs, "pairs"), as_paths(self.val_pairs, "val_pairs")  # one file may come bare
        self.arch = as_settings(self.arch, DualEncoderConfig, "arch")
        self.train = as_settings(self.train, TrainConfig, "train")

    @classmethod
    def from_dict(cls, d: dict) -> "ContrastiveRecipe":
        arch, train, d = recipe_parts(cls, d, list_keys=("pairs", "val_pairs"))
        return cls(arch=DualEncoderConfig.from_dict(arch), train=train, **d)

    def validate(self) -> None:
        check_types(self)
        check_ranges(self, {"batch_size": ("at least 2 (a contrastive batch compares pairs)", lambda v: v >= 2),
                            "gradcache_chunk": NON_NEGATIVE, "views": AT_LEAST_1, "workers": NON_NEGATIVE,
                            "val_fraction": FRACTION,
                            "hard_negatives": (f"one of {', '.join(HARD_NEGATIVE_MODES)}",
                                               lambda v: v in HARD_NEGATIVE_MODES)})
        self.train.validate()
        self.arch.validate()
        refuse_lone_val_split(self)
        if self.train.early_stop_metric.startswith("val/zeroshot") and not self.zeroshot_labels:
            # without the labels nothing reports it: the run would keep epochs by the training loss, or fail after
            # its first epoch (on --resume: the run's metric, chosen when it had --zeroshot-labels)
            raise PolymodalError(f"early_stop_metric {self.train.early_stop_metric!r} is zero-shot accuracy on "
                                 "--zeroshot-labels FILE (zeroshot_labels in Python), and none is given; pass the "
                                 "labels file (the run's, on --resume)")
        if self.train.unfreeze_every and not self.arch.image_trainable_blocks:  # min(0, ...) would open nothing
            raise PolymodalError("unfreeze_every opens one more image block every E epochs, up to "
                                 "image_trainable_blocks, which is 0; set both, e.g. --unfreeze-every 2 "
                                 "--image-trainable-blocks 4 (train.unfreeze_every, arch.image_trainable_blocks in "
                                 "Python)")
        check_unfreezing_schedule(self.train.unfreeze_every, self.arch.image_trainable_blocks, self.train.epochs)


def check_unfreezing_schedule(every: int, blocks: int, epochs: int) -> None:
    """Epoch k (from 1) trains min(blocks, (k - 1) // every) image blocks: a schedule that has not opened all
    `blocks` by the last epoch would train fewer blocks than asked (none when every >= epochs), while the run
    still caches the trunk under all of them and runs the frozen ones every step."""
    if not every or not blocks:
        return
    opened, needed = min(blocks, (epochs - 1) // every), blocks * every + 1
    if opened < blocks:
        raise PolymodalError(f"unfreeze_every {every} with epochs {epochs} opens {opened} of the "
                             f"{blocks} image blocks (image_trainable_blocks) by the last epoch: one more opens "
                             f"every {every} epochs, from epoch {every + 1}, so all {blocks} need epochs {needed} "
                             f"or more; pass --epochs {needed}, or --image-trainable-blocks {opened} (train.epochs, "
                             "arch.image_trainable_blocks in Python)"
                             if opened else
                             f"unfreeze_every {every} with epochs {epochs} opens no image block: the first opens in "
                             f"epoch {every + 1}; pass --epochs {needed} (all {blocks} blocks open by then) or a "
                             "smaller --unfreeze-every (train.epochs, train.unfreeze_every in Python)")


def rank_batch_size(images: int, batch_size: int, world: int = 1) -> int:
    """The batch each rank trains on: batch_size, capped so that every rank gets one full batch (the sampler hands
    each rank images // world items and the loader drops a last partial batch)."""
    if images < 2:
        raise PolymodalError(f"need at least 2 training images, got {images}; add pairs (--val-fraction moves some "
                             "images to validation: pass --val-pairs FILE to keep them all for training; "
                             "val_fraction, val_pairs in Python)")
    if images < 2 * world:  # InfoNCE needs a second image in each batch to contrast with
        raise PolymodalError(f"{images} training images cannot give each of {world} processes a batch of 2; add "
                             "pairs or start fewer processes (torchrun --nproc_per_node)")
    return min(batch_size, images // world)


def retrieval_eval(model, image_feats: np.ndarray, text_feats, caption_image: np.ndarray) -> dict:
    """R@1/5/10 both ways on cached features, plus rsum (sum of the six recalls) for early stopping."""
    with torch.no_grad():
        # a batch at a time, as the texts: with --image-trainable-blocks the cache holds the trunk, and the blocks
        # run over the whole validation set at once took ~1 MB (2 blocks) to ~10 MB (16) per photo in one go
        view = image_feats[0]
        img = torch.cat([model.image_from_cache(torch.from_numpy(np.array(view[i : i + 128], np.float32)))
                         for i in range(0, len(view), 128)])
        img = torch.nn.functional.normalize(img, dim=-1)
        if isinstance(text_feats, (np.ndarray, RowSubset)):  # features, not the captions
            txt = model.text_from_pooled(torch.from_numpy(np.array(text_feats[:], np.float32)))
        else:
            txt = torch.cat([model._text_batch(text_feats[i : i + 128]) for i in range(0, len(text_feats), 128)])
        txt = torch.nn.functional.normalize(txt, dim=-1)
    m = retrieval_metrics(img.numpy(), txt.numpy(), caption_image)
    m["rsum"] = sum(v for k, v in m.items() if "R@" in k)
    return {"val/" + k: v for k, v in m.items()}


MIN_VAL_PHOTOS = 20  # below this, validation recall barely ranks epochs


def train_contrastive(recipe: ContrastiveRecipe, resume: bool = False, progress: bool = True,
                      overwrite: bool = False) -> dict:
    recipe.validate()
    distributed.init_from_env()
    progress = progress and distributed.is_main()  # one set of progress bars under torchrun, not one per rank
    # torchrun: every process checks the same settings and reads the same files, and a mistake is printed once
    with distributed.said_once():  # (its collective: every rank has checked the folder before rank 0 writes to it)
        check_run_folder(recipe.out, resume, overwrite, recipe.train.epochs, recipe.train.patience)
    set_seed(recipe.train.seed)  # before the heads are initialised: same seed, same run
    with distributed.said_once(), only_splits(recipe.split):
        train_set = read_pair_sources(recipe.pairs)
    _same_pairs_on_all_ranks(train_set, "--pairs")
    # the texts are encoded before the split, as one list no --seed changes (a list per split was a new cache entry
    # for every seed, all its captions encoded again)
    texts_of_run = TextRows(_texts_of(train_set, recipe))
    if recipe.val_pairs:
        with distributed.said_once(), only_splits(recipe.val_split, "--val-split"):
            val_set = read_pair_sources(recipe.val_pairs)
        _same_pairs_on_all_ranks(val_set, "--val-pairs")
        warn_of_shared_photos(train_set.images, val_set.images, "--val-pairs")
    elif recipe.val_fraction > 0:
        train_set, val_set = split_by_image(train_set, recipe.val_fraction, seed=recipe.train.seed)
    else:
        val_set = None
    log.info("train: %s; val: %s", train_set, val_set)

    with distributed.said_once():  # --model, --zeroshot-labels, --resume's checks: a mistake is printed once
        if recipe.model == "lite":
            model = DualEncoder(recipe.arch)
        elif is_dual_encoder_folder(Path(recipe.model)):
            model = load_dual_encoder(recipe.model)  # continue training a saved dual encoder
            recipe.arch = model.config
        else:
            raise PolymodalError(wrong_folder_hint(recipe.model)
                                 or f"cannot train from {recipe.model!r}; pass --model lite or the model folder of a "
                                 "`polymodal train contrastive` run (RUN/model; model= in Python)")
        name_after_run(model, recipe.out)
        validation = validation_record(val_set)  # before unreadable photos are dropped: what the data gives
        # zero-shot labels read before any photo is encoded (a wrong file is an error at once); when zero-shot top-1
        # chooses the epoch kept, its labelled photos are validation data too: another labels file on --resume would
        # compare the best score with one taken on other photos
        labelled = read_labelled_images(recipe.zeroshot_labels) if recipe.zeroshot_labels else None
        if labelled is not None and val_set is None and recipe.train.early_stop_metric == "val/rsum":  # no recall
            log.info("no validation pairs: the best epoch is the one with the best zero-shot top-1")
            recipe.train.early_stop_metric = "val/zeroshot_top1"
        chooses = labelled is not None and recipe.train.early_stop_metric.startswith("val/zeroshot")
        zeroshot_validation = validation_record(None, list(zip(*labelled)), "labels") if chooses else None
        if resume:
            check_same_run(Path(recipe.out), recipe.arch, recipe.train,
                           val_fraction=None if recipe.val_pairs else recipe.val_fraction,
                           seed_draws_validation=not recipe.val_pairs and recipe.val_fraction > 0)
            check_same_validation_set(Path(recipe.out), validation)
            check_same_validation_set(Path(recipe.out), zeroshot_validation, "zeroshot_validation")
    feats = image_features(model, train_set.images, views=recipe.views, augment=Augment(), seed=recipe.train.seed,
                           progress=progress, skip_unreadable=True, split_across_ranks=True)  # torchrun: a share each
    rows = readable_rows(feats)
    train_set = readable_pairs(train_set, rows)
    texts = (texts_of_run.of(model, train_set.captions, progress=progress, split_across_ranks=True)
             if model.text_frozen else train_set.captions)
    negatives = _hard_negatives(model, train_set, recipe, texts_of_run, progress)
    dataset = CachedPairDataset(feats, texts, train_set.caption_image, seed=recipe.train.seed, rows=rows,
                                negatives=negatives)
    batch = rank_batch_size(len(dataset), recipe.batch_size, distributed.world_size())
    if resume:
        _warn_of_another_global_batch(Path(recipe.out), batch, distributed.world_size())
    # The order of epoch e depends only on (seed, e), so a resumed run sees the batches the straight run saw.
    # DistributedSampler does exactly that, and also shards the data when torchrun starts several ranks.
    sampler = DistributedSampler(dataset, num_replicas=distributed.world_size(), rank=distributed.rank(),
                                 seed=recipe.train.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, collate_fn=collate_cached,
                        num_workers=recipe.workers)
    dataset.set_epoch = _both(dataset.set_epoch, sampler.set_epoch)

    eval_fn = None
    if val_set is not None:
        val_img = image_features(model, val_set.images, views=1, progress=progress, skip_unreadable=True,
                                 split_across_ranks=True, desc="caching validation image features")
        rows = readable_rows(val_img)
        if len(rows) < len(val_set.images):
            val_set, val_img = readable_pairs(val_set, rows), val_img[:, rows]
        if len(val_set.images) < MIN_VAL_PHOTOS:
            log.warning("only %d validation photos: recall over so few hardly changes between epochs (R@5 is 1.0 below 6, "
                        "R@10 below 11), so the epoch kept says little; validate on %d or more (--val-pairs, or a larger "
                        "--val-fraction; val_pairs, val_fraction in Python)", len(val_set.images), MIN_VAL_PHOTOS)
        val_txt = (texts_of_run.of(model, val_set.captions, progress=progress, split_across_ranks=True,
                                   desc="caching validation caption features")
                   if model.text_frozen else val_set.captions)
        eval_fn = lambda m: retrieval_eval(m, val_img, val_txt, val_set.caption_image)  # noqa: E731

    chose = list(val_set.images) if val_set is not None else []  # the photos that choose the epoch kept
    if labelled is not None:
        eval_fn = _with_zeroshot(eval_fn, *labelled)
        if chooses:
            chose += list(labelled[0])

    objective = ContrastiveObjective(gradcache_chunk=recipe.gradcache_chunk or None, gather=distributed.is_distributed())
    trainer = Trainer(model, {"contrastive": (objective, 1.0, loader)}, recipe.train, recipe.out, eval_fn, progress)
    out = Path(recipe.out)
    settings = asdict(recipe) | absolute_paths(recipe, ("pairs", "val_pairs"), ("zeroshot_labels", "model")) | {
        "train_images": len(train_set.images), "val_images": len(val_set.images) if val_set else 0,
        "world_size": distributed.world_size(), "global_batch": batch * distributed.world_size(),
        "validation": validation, "zeroshot_validation": zeroshot_validation}
    # beside each saved model (with the validation photos that chose it): `eval` warns when it scores them
    photos = TrainingPhotos(train_set.images, recipe.model, chose, earlier=out / "model" if resume else None,
                            settings=settings, call=python_call(train_contrastive, recipe, resume), trainer=trainer)
    if distributed.is_main():  # after what reads --model's folder: --overwrite moves RUN/model aside
        prepare_run_folder(out, overwrite)
    best = trainer.fit(resume=resume, on_best=lambda m: photos.save(m, out / "model"),
                       on_start=lambda: write_train_config(out, settings),  # after the checkpoint loaded
                       # lite's space: scored as epoch 0, RUN/model stays it unless an epoch ties or beats it
                       score_start=recipe.model != "lite" or recipe.arch.starts_as_lite)
    if distributed.is_main():  # without validation the last epoch's model; else the best's record, updated
        photos.finish(model, out / "model")
    return best


def _warn_of_another_global_batch(out: Path, batch: int, world: int) -> None:
    """--batch-size is per process: a run resumed under another process count (torchrun --nproc_per_node), or with
    another --batch-size, trains on another global batch than its earlier epochs did; say so, with the flag that
    keeps it."""
    from polymodal.train.run_settings import recorded_settings

    try:
        saved = recorded_settings(out)
        was, was_world = int(saved["global_batch"]), int(saved["world_size"])
    except (ValueError, KeyError, TypeError):
        return  # a run from before these were recorded (or none: None)
    if was != batch * world and distributed.is_main():
        keep = f"; pass --batch-size {was // world} to keep it" if was % world == 0 else ""
        log.warning("the run trained on a global batch of %d (%d process%s x %d); this session's is %d (%d x %d)%s",
                    was, was_world, "" if was_world == 1 else "es", was // was_world, batch * world, world, batch, keep)


def _same_pairs_on_all_ranks(pairs: PairSet, flag: str) -> None:
    """torchrun: every process must read the same pairs (see distributed.same_rows_on_all_ranks). Photos by file
    name, as validation_record hashes them: machines that mount the data at other paths still train together."""
    rows = ["\t".join([Path(str(p.image)).name, p.caption, *p.negatives]) for p in pairs.pairs]
    distributed.same_rows_on_all_ranks(rows, f"{flag} data", "every process must read the same files (torchrun "
                                       "--nnodes: the same data on every machine, e.g. on storage they share)")


def _texts_of(pairs: PairSet, recipe: ContrastiveRecipe) -> list[str]:
    """The texts a run over ``pairs`` may encode: captions, and the data's hard negatives when they are used."""
    negatives = [n for p in pairs.pairs for n in p.negatives] if recipe.hard_negatives != "none" else []
    return pairs.captions + negatives


def _hard_negatives(model, train_set: PairSet, recipe: ContrastiveRecipe, texts_of_run: TextRows, progress: bool):
    """(negative features or texts [M], per caption the indices of its negatives), or None without negatives."""
    lists = negatives_per_caption(train_set.pairs, recipe.hard_negatives, seed=recipe.train.seed)
    flat = [text for texts in lists for text in texts]
    if not flat:
        if recipe.hard_negatives == "swap":
            log.warning("no caption has two different content words to swap: training without hard negatives")
        return None
    log.info("hard negatives: %d texts for %d of %d captions (%s)", len(flat), sum(map(bool, lists)), len(lists),
             recipe.hard_negatives)
    ends = np.cumsum([len(texts) for texts in lists])
    negatives_of = [np.arange(end - len(texts), end) for end, texts in zip(ends, lists)]
    features = (texts_of_run.of(model, flat, progress=progress, split_across_ranks=True,
                                desc="caching hard-negative features") if model.text_frozen else flat)
    return features, negatives_of


def _with_zeroshot(eval_fn, images: list, labels: list):
    """eval_fn that adds zero-shot top-1/top-5 on the labelled photos."""
    from polymodal.eval.zeroshot import zeroshot_accuracy

    kept = ZeroShotTowerOutputs(images, labels)

    def run(model) -> dict:
        metrics = eval_fn(model) if eval_fn else {}
        z = kept.score(model)
        if z is None:  # towers that train (or outputs too large to keep): the whole pass, as any model gets it
            model.forget_label_embeddings()  # the heads changed: label embeddings must be recomputed
            z = zeroshot_accuracy(model, images, labels)
        return metrics | {"val/zeroshot_top1": z["top1"], "val/zeroshot_top5": z["top5"]}

    return run


class _TooLargeToKeep(Exception):
    """The labelled photos' tower outputs pass ZeroShotTowerOutputs.MAX_BYTES (not a PolymodalError: each_or_error
    would take it for an unreadable photo)."""


class ZeroShotTowerOutputs:
    """Zero-shot accuracy after each epoch from the frozen towers' outputs on the labelled photos and the class
    prompts, kept from the first call (in memory, float32: the figures `zeroshot_accuracy` gives, to float
    rounding): between epochs only the heads change, and running the image tower over every labelled photo and
    the text tower over every prompt again cost each epoch several times the epoch's training (50 Flickr8k photos,
    `--config default`: 1.5 s against 0.17 s; benchmarks/train_caching.py)."""

    MAX_BYTES = 1 << 30  # a trunk kept for many unfrozen blocks can be ~1.6 MB a photo: above this, each epoch re-runs

    def __init__(self, images: list, labels: list) -> None:
        self.images, self.labels = images, labels
        self.pixels_out = self.prompts_out = None  # tower outputs, once computed
        self.off = False

    def score(self, model) -> dict | None:
        """{"top1", "top5", ...} as `zeroshot_accuracy(model, images, labels)`, or None where the towers' outputs
        cannot be kept (a text tower that trains)."""
        from polymodal.apps.zeroshot import averaged_prompts
        from polymodal.eval.zeroshot import TEMPLATES, _classes, zeroshot_accuracy
        from polymodal.models.base import l2_normalize

        if self.off or not model.text_frozen:
            return None
        classes = _classes(self.labels)
        if self.pixels_out is None:
            self._keep(model, classes, TEMPLATES)
            if self.off:
                return None
        feats, rows = self.pixels_out
        with torch.inference_mode():  # the batches encode_image runs, through the heads only
            image_emb = torch.cat([l2_normalize(model.image_from_cache(feats[i : i + 32]))
                                   for i in range(0, len(feats), 32)]).numpy()
            prompts = l2_normalize(model.text_from_pooled(self.prompts_out)).numpy()
        class_emb = averaged_prompts(prompts, len(classes), len(TEMPLATES))  # as PromptCache averages them
        # the classes of every labelled photo, as zeroshot_accuracy ranks them when some cannot be read
        return zeroshot_accuracy(model, [self.images[i] for i in rows], [self.labels[i] for i in rows],
                                 image_emb=image_emb, class_emb=class_emb,
                                 classes=classes if len(rows) < len(self.labels) else None)

    def _keep(self, model, classes: list, templates: tuple) -> None:
        from polymodal.apps.zeroshot import class_prompts
        from polymodal.models.inputs import as_pixels, each_or_error, readable_results

        kept = [0]  # bytes so far

        def tower(chunk: list) -> list:  # encode_image's pass up to what image_from_cache takes
            with torch.inference_mode():
                out = model.image_cache_input(torch.from_numpy(as_pixels(model.transform(chunk)))).float()
            kept[0] += out.element_size() * out.nelement()
            if kept[0] > self.MAX_BYTES:  # stop at once: the whole pass, thrown away, cost an epoch's scoring again
                raise _TooLargeToKeep
            return list(out)

        was = model.training
        model.eval()
        try:
            try:
                results = each_or_error(tower, self.images, 32)
            except _TooLargeToKeep:
                self.off = True
                return
            rows = readable_results(results, "image")
            self.pixels_out = torch.stack([results[i] for i in rows]), rows
            prompts = class_prompts(classes, templates)
            self.prompts_out = torch.from_numpy(np.array(text_features(model, prompts, progress=False), np.float32))
        finally:
            model.train(was)


def _both(f, g):
    def call(epoch: int) -> None:
        f(epoch)
        g(epoch)

    return call
