"""`polymodal train vqa`: train a fusion encoder on {"image", "question", "answer"} rows.

The frozen towers run once: image grid tokens per image (float16) and question token states per distinct question
are cached on disk (``$POLYMODAL_CACHE/features``), so an epoch is only projections + fusion + heads. A batch holds
whole images with all their questions (about ``batch_size`` questions). Validation accuracy (a split by image when
no ``val_qa`` is given) drives early stopping; the best model is saved to RUN/model (loadable with
polymodal.load), with RUN/checkpoint.pt (resume), RUN/metrics.jsonl and RUN/train_config.json beside it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from polymodal.cache import cache_key
from polymodal.cache import store_cached as _store
from polymodal.data.answers import comparable_answer, normalize_answer
from polymodal.data.jsonl import only_splits
from polymodal.data.pairs import held_out_images
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import QARow, accuracy_by_type, read_qa, warn_of_answers_outside
from polymodal.models.fusion_encoder import (
    FREEZABLE,
    TEXT_DIM,
    FusionEncoder,
    FusionEncoderConfig,
    continued_folder,
    load_fusion_encoder,
)
from polymodal.models.inputs import as_parts, as_paths, as_settings
from polymodal.models.interface import batch_order
from polymodal.models.modes import evaluating
from polymodal.models.not_finite import BROKEN
from polymodal.progress import batch_progress
from polymodal.train.features import (
    _load_cached, _nan_rows, image_features, readable_subset, report_unreadable,
)
from polymodal.train.guards import (
    AT_LEAST_1, AT_LEAST_2, FRACTION, FREEZE_UNDER_HEADS, LOWER_LR, NON_NEGATIVE, check_ranges, check_types,
    freeze_parts, refuse_lone_val_split, refuse_unfreezing, warn_of_shared_photos,
)
from polymodal.train.fusion_run import check_fusion_start, fit_and_save
from polymodal.train.run_settings import (
    absolute_paths,
    another_run,
    check_same_answers,
    check_same_fusion,
    check_same_run,
    check_same_validation_set,
    name_after_run,
    recipe_parts,
    recorded_settings,
    switched_validation,
    validation_record,
)
from polymodal.train.token_states import StatesFill
from polymodal.train.trainer import TrainConfig, Trainer, set_seed
from polymodal.train.vqa_objective import VQABatch, VQAObjective
from polymodal.trained_with import python_call
from polymodal.training_photos import TrainingPhotos

log = logging.getLogger(__name__)

VQA_TRAIN_DEFAULTS = {"early_stop_metric": "val/accuracy", "epochs": 10, "lr": 1e-3, "weight_decay": 0.05,
                      "warmup_steps": None, "warmup_cap": 30, "warmup_fraction": 0.5,
                      "patience": 3}


@dataclass
class VQARecipe:
    qa: list[str]
    out: str
    val_qa: list[str] = field(default_factory=list)
    val_fraction: float = 0.1  # without val_qa: this fraction of the images (with all their questions) validates
    model: str = "new"  # "new" (fresh heads over the towers) or a fusion-encoder folder to continue from
    new_head: bool = False  # from a folder: a fresh VQA head over this data's answers (automatic for a
    #                         pretrained encoder, which has none)
    freeze: list[str] = field(default_factory=list)  # parts not trained: projections, image_proj, text_proj, fusion, itm
    arch: FusionEncoderConfig = field(default_factory=FusionEncoderConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**VQA_TRAIN_DEFAULTS))
    batch_size: int = 256  # questions per step (whole images are packed, so about this many)
    min_answer_count: int = 1  # answers seen fewer times in training are left out of the vocabulary
    max_answers: int = 3000  # the vocabulary keeps the most frequent answers
    label_smoothing: float = 0.0
    itm_weight: float = 0.0  # > 0 trains the ITM head (arch.itm_head) on true vs sampled wrong answers
    workers: int = 0
    split: str = ""  # JSON rows of these "split" values only (comma-separated), e.g. "train"; "": every row
    val_split: str = ""  # the same for val_qa
    # build_vqa_model drops a continued model's pretraining heads, and train_config.json records it so: a run's
    # settings read back (--config RUN/train_config.json) compare with --model's architecture as continued
    CONTINUED_ARCH: ClassVar[dict] = {"mlm_head": False, "mrm_head": ""}

    def __post_init__(self) -> None:  # from Python, nested settings may come as dicts (as in a --config file)
        self.qa, self.val_qa = as_paths(self.qa, "qa"), as_paths(self.val_qa, "val_qa")  # one file may come bare
        self.freeze = as_parts(self.freeze)
        self.arch = as_settings(self.arch, FusionEncoderConfig, "arch")
        self.train = as_settings(self.train, TrainConfig, "train", VQA_TRAIN_DEFAULTS)

    @classmethod
    def from_dict(cls, d: dict) -> "VQARecipe":
        arch, train, d = recipe_parts(cls, d, "VQA training ", VQA_TRAIN_DEFAULTS, ("qa", "val_qa"))
        if isinstance(arch, dict) and isinstance(arch.get("answers"), int):  # train_config.json keeps their number
            arch = {k: v for k, v in arch.items() if k != "answers"}
        arch = FusionEncoderConfig.from_dict(arch) if isinstance(arch, dict) else arch  # answers: from the data
        return cls(arch=arch, train=train, **d)

    def validate(self) -> None:
        check_types(self)
        check_ranges(self, {"batch_size": AT_LEAST_1, "min_answer_count": AT_LEAST_1, "max_answers": AT_LEAST_2,
                            "label_smoothing": FRACTION, "itm_weight": NON_NEGATIVE, "workers": NON_NEGATIVE,
                            "val_fraction": FRACTION})
        refuse_unfreezing(self.train)
        refuse_lone_val_split(self, "val_qa")
        if self.model == "new" and self.arch.itm_head and not self.itm_weight:
            # the head would never train, yet answer(choices=) scores candidates outside the vocabulary with it
            raise PolymodalError("itm_head without itm_weight builds an image-text matching head that never trains, "
                                 "yet it would score multiple-choice candidates outside the answer vocabulary; pass "
                                 "--itm-weight (e.g. 0.5; itm_weight in Python) or drop --itm-head")
        self.train.validate()


# -- feature cache --------------------------------------------------------------------------------------------------


def grid_features(model: FusionEncoder, images: Sequence, batch_size: int = 32, progress: bool = True,
                  skip_unreadable: bool = False) -> np.ndarray:
    """``[N, g*g, F]`` float16 image grid tokens (model.image_cache_input), memory-mapped from the cache. An
    unreadable image is an error, or with ``skip_unreadable`` gets NaN tokens (see `readable_subset`)."""
    return image_features(model, images, batch_size=batch_size, progress=progress, skip_unreadable=skip_unreadable)[0]


@torch.inference_mode()
def question_features(model: FusionEncoder, questions: Sequence[str], batch_size: int = 256,
                      progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token states ``[Q, L, 384]`` float16 (padding zeroed) and lengths ``[Q]`` of distinct questions (cached)."""
    key = cache_key(model.text_cache_signature, *questions)
    path, states = _load_cached(key, "vqa-text")
    len_path, lengths = _load_cached(key, "vqa-textlen")
    if states is not None and lengths is not None:
        return states, lengths
    states, lengths = _question_states(model, questions, batch_size, progress, path=path)
    return states, _store(len_path, lengths)


def _question_states(model: FusionEncoder, questions: Sequence[str], batch_size: int, progress: bool = False,
                     by_length: bool = True, path=None) -> tuple[np.ndarray, np.ndarray]:
    """question_features' arrays, computed: the states written to the cache file at ``path`` batch by batch (in
    memory without one). ``by_length``: batches cut in order of length (each is padded to its longest question: in
    the questions' order the COCO yes/no questions ran 1.8x their tokens, in order of length 1.4x; the same states
    to ~1e-6, benchmarks/train_caching.py)."""
    order = batch_order(model, questions, by_length)  # by token counts where the tower has them, else characters
    starts = list(range(0, len(questions), batch_size))
    starts = starts[-1:] + starts[:-1]  # the longest questions first: the file takes their batch's width at once
    states, lengths = StatesFill(path, len(questions), dim=TEXT_DIM), np.zeros(len(questions), np.int64)
    try:
        for i in batch_progress(starts, len(questions), batch_size, desc="caching question tokens", unit="question",
                                disable=not progress):
            rows = order[i : i + batch_size]
            s, m = model.text_cache_input([questions[j] for j in rows])
            states.write(rows, s.numpy())
            lengths[rows] = m.sum(1).numpy()
    except BaseException:  # an error or an interrupt: no temporary file left behind
        states.discard()
        raise
    return states.finish(), lengths


def _mask(lengths: np.ndarray, width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.from_numpy(np.asarray(lengths, dtype=np.int64))[:, None]


def _gather_questions(states: np.ndarray, lengths: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    lens = lengths[idx]
    width = max(1, int(lens.max())) if len(idx) else 1
    return torch.from_numpy(np.asarray(states[idx, :width], dtype=np.float32)), _mask(lens, width)


@torch.inference_mode()
def predict_features(model: FusionEncoder, image_feats: np.ndarray, q_states: np.ndarray, q_len: np.ndarray,
                     row_image: np.ndarray, row_question: np.ndarray, images_per_batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Cached features -> (answer index ``[R]``, probability ``[R]``) per row, a chunk of images at a time."""
    best = np.zeros(len(row_image), dtype=np.int64)
    prob = np.zeros(len(row_image), dtype=np.float32)
    chunks = _logit_chunks(model, image_feats, q_states, q_len, row_image, row_question, images_per_batch)
    for rows, _, _, logits in chunks:
        s, b = logits.softmax(-1).max(-1)
        best[rows], prob[rows] = b.numpy(), s.numpy()
    return best, prob


def _logit_chunks(model: FusionEncoder, image_feats: np.ndarray, q_states: np.ndarray, q_len: np.ndarray,
                  row_image: np.ndarray, row_question: np.ndarray, images_per_batch: int = 64):
    """Yields (row numbers, the chunk's image features [U, T, F], each row's image among them [r], answer logits
    [r, A]) a chunk of images at a time."""
    with evaluating(model):  # the caller's mode is put back when the chunks are done: a training loop keeps its dropout
        yield from _chunks(model, image_feats, q_states, q_len, row_image, row_question, images_per_batch)


def _chunks(model, image_feats, q_states, q_len, row_image, row_question, images_per_batch):
    row_image, row_question = np.asarray(row_image), np.asarray(row_question)
    order = np.argsort(row_image, kind="stable")
    bounds = np.searchsorted(row_image[order], np.arange(0, image_feats.shape[0] + images_per_batch, images_per_batch))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows = order[lo:hi]
        if not len(rows):
            continue
        used, local = np.unique(row_image[rows], return_inverse=True)
        images = torch.from_numpy(np.asarray(image_feats[used], dtype=np.float32))
        states, mask = _gather_questions(q_states, q_len, row_question[rows])
        with torch.inference_mode():
            logits = model.vqa_logits(images, states, mask, torch.from_numpy(local.astype(np.int64))).float()
        yield rows, images, local, logits


@torch.inference_mode()
def cached_predictions(model: FusionEncoder, images: Sequence, questions: Sequence[str], progress: bool = False,
                       skip_unreadable: bool = False, choices: Sequence | None = None) -> list[tuple[str, float] | str]:
    """(answer, probability) per (image path, question) row through the on-disk feature cache. An unreadable image
    is an error, or with ``skip_unreadable`` its rows get a str saying so (as `each_or_error` gives failures).
    ``choices`` (candidates per row, or None/() for an open row) makes a row multiple choice: (the best candidate,
    its score), ranked as ``answer(..., choices=...)`` ranks them."""
    img_index: dict[str, int] = {}
    q_index: dict[str, int] = {}
    row_image = np.array([img_index.setdefault(str(Path(i)), len(img_index)) for i in images], dtype=np.int64)
    row_question = np.array([q_index.setdefault(str(q), len(q_index)) for q in questions], dtype=np.int64)
    choices = list(choices) if choices is not None else [None] * len(row_image)
    paths = list(img_index)  # as text: a Parquet file's or a shard's "<file>#<row>" is no path (open_pair_image)
    feats = grid_features(model, paths, progress=progress, skip_unreadable=skip_unreadable)
    q_list = list(q_index)
    states, lengths = question_features(model, q_list, progress=progress)
    out: list = [None] * len(row_image)
    for rows, chunk_feats, local, logits in _logit_chunks(model, feats, states, lengths, row_image, row_question):
        prob, best = (t.tolist() for t in logits.softmax(-1).max(-1))  # plain lists: a loop over rows follows
        for k, r in enumerate(rows.tolist()):
            if not choices[r]:
                out[r] = (model.answers[best[k]], prob[k])
                continue
            image = chunk_feats[local[k] : local[k] + 1]  # the ITM head scores candidates outside the vocabulary on it
            out[r] = model._rank_choices(logits[k], image, q_list[row_question[r]], choices[r])[0]
    unread = set(_nan_rows(feats).tolist()) if skip_unreadable else set()  # their NaN features gave NaN answers
    return [f"not a readable image: {paths[i]}" if i in unread else result for i, result in zip(row_image, out)]


# -- data --------------------------------------------------------------------------------------------------------------


@dataclass
class EncodedQA:
    """QA rows over cached features: row i asks question ``row_question[i]`` about image ``row_image[i]``."""

    rows: list[QARow]
    images: list
    questions: list[str]
    row_image: np.ndarray
    row_question: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[QARow]) -> "EncodedQA":
        img_index: dict = {}
        q_index: dict = {}
        ri = [img_index.setdefault(r.image, len(img_index)) for r in rows]
        rq = [q_index.setdefault(r.question, len(q_index)) for r in rows]
        return cls(rows, list(img_index), list(q_index), np.asarray(ri, np.int64), np.asarray(rq, np.int64))


def readable_qa(model: FusionEncoder, rows: list[QARow], source, progress: bool = True) -> tuple[EncodedQA, object]:
    """(the rows whose image could be read, their images' grid tokens): rows of an unreadable image (a truncated
    JPEG, a file that is no image) are left out with one warning; no readable image at all is an error."""
    data = EncodedQA.from_rows(rows)
    feats = grid_features(model, data.images, progress=progress, skip_unreadable=True)
    readable, feats = readable_subset(feats)
    if len(readable) == len(data.images):
        return data, feats
    report_unreadable(source, data.images, readable)
    keep = {data.images[i] for i in readable}
    return EncodedQA.from_rows([r for r in rows if r.image in keep]), feats


def split_by_image(rows: list[QARow], fraction: float, seed: int = 0) -> tuple[list[QARow], list[QARow]]:
    """Hold out ``fraction`` of the images (with all their questions): no validation image is seen in training."""
    images = sorted({str(r.image) for r in rows})
    _, val = held_out_images(images, fraction, seed, "pass --val-qa")
    val = {images[i] for i in val}
    return [r for r in rows if str(r.image) not in val], [r for r in rows if str(r.image) in val]


def asked_features(model: FusionEncoder, questions: dict[str, int], data: EncodedQA,
                   progress: bool = True) -> tuple[EncodedQA, np.ndarray, np.ndarray]:
    """(``data``, its questions' states and lengths: `question_features`) with its rows pointing into the run's list
    ``questions`` (text -> row, made before the split by --seed) where that holds all of its questions; else into
    its own list (--val-qa's: a list no seed changes already)."""
    if all(q in questions for q in data.questions):
        rows = np.asarray([questions[q] for q in data.questions], np.int64)
        data = replace(data, questions=list(questions), row_question=rows[data.row_question])
    return (data, *question_features(model, data.questions, progress=progress))


def answer_vocabulary(rows: Sequence[QARow], min_count: int = 1, max_answers: int = 3000) -> list[str]:
    """The most frequent training answers (ties alphabetical), each seen at least min_count times. Answers that
    evaluation scores as one ('Yes!' and 'yes', 'two' and '2', 'a dog' and 'dog': comparable_answer) are one class,
    named by its most frequent spelling."""
    spellings: dict[str, Counter] = {}
    for r in rows:
        spellings.setdefault(comparable_answer(r.answer), Counter())[r.answer] += 1
    counts = Counter({min(c, key=lambda a: (-c[a], a)): sum(c.values()) for c in spellings.values()})
    if len(counts) == 1:  # the model would learn to say it whatever it is asked: loss 0, accuracy 1.0
        raise PolymodalError(f"every training question has the same answer ({next(iter(counts))!r}); a VQA model "
                             "needs at least two different answers to learn from")
    ranked = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    if not ranked:
        raise PolymodalError(f"no answer occurs {min_count}+ times in the training rows; lower min_answer_count")
    if len(ranked) == 1:  # the same dead end as one answer in the data, reached through the count filter
        raise PolymodalError(f"only {ranked[0]!r} occurs {min_count}+ times in the training rows, and a VQA model "
                             "needs at least two answers to choose from; lower min_answer_count")
    return ranked[:max_answers]


def answer_targets(answer_index: dict[str, int], rows: Sequence[QARow]) -> np.ndarray:
    """Each row's class (answer_index: a model's, keyed by comparable_answer) by its answer as evaluation compares
    it, so 'Yes!' trains 'yes' (answer_vocabulary made them one class); -1 for an answer outside the vocabulary."""
    return np.asarray([answer_index.get(comparable_answer(r.answer), -1) for r in rows], dtype=np.int64)


class EpochShuffle(Sampler):
    """A permutation that depends only on (seed, epoch): a resumed run sees the batches the straight run saw."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())


class ImageQuestionSet(Dataset):
    """Item = one image with all its training questions; `collate` packs items into a `VQABatch`."""

    def __init__(self, image_feats: np.ndarray, q_states: np.ndarray, q_len: np.ndarray, row_image: np.ndarray,
                 row_question: np.ndarray, row_target: np.ndarray, itm: tuple | None = None, seed: int = 0) -> None:
        self.image_feats = image_feats
        self.q_states, self.q_len = np.asarray(q_states), np.asarray(q_len)  # small: held in memory
        self.row_question, self.row_target = row_question, row_target
        # rows whose answer is outside the vocabulary train through the ITM loss alone (multiple choice scores such
        # answers with the ITM head): on easy-VQA with 2 answers held out, 0.99 of them chosen right vs 0.10 without
        keep = np.arange(len(row_target)) if itm is not None else np.flatnonzero(row_target >= 0)
        order = keep[np.argsort(row_image[keep], kind="stable")]
        self.image_ids, starts = np.unique(row_image[order], return_index=True)
        self.rows_of = np.split(order, starts[1:])
        self.itm = itm  # (states, lengths, row_pos, row_neg) or None
        self.sampler = EpochShuffle(len(self.image_ids), seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> int:
        return i

    @property
    def rows(self) -> int:
        return sum(len(r) for r in self.rows_of)

    def collate(self, items: list[int]) -> VQABatch:
        items = sorted(items)
        images = torch.from_numpy(np.asarray(self.image_feats[self.image_ids[items]], dtype=np.float32))
        rows = np.concatenate([self.rows_of[i] for i in items])
        row_image = torch.from_numpy(np.repeat(np.arange(len(items)), [len(self.rows_of[i]) for i in items]))
        states, mask = _gather_questions(self.q_states, self.q_len, self.row_question[rows])
        batch = VQABatch(torch.from_numpy(self.row_target[rows]), row_image, images, states, mask)
        if self.itm is None:
            return batch
        itm_states, itm_len, row_pos, row_neg = self.itm
        texts = np.concatenate([row_pos[rows], row_neg[rows]])
        s, m = _gather_questions(itm_states, itm_len, texts)
        labels = torch.cat([torch.ones(len(rows)), torch.zeros(len(rows))])
        return batch._replace(itm_states=s, itm_mask=m, itm_labels=labels, itm_row_image=torch.cat([row_image, row_image]))


def _itm_texts(rows: list[QARow], answers: list[str], seed: int, text=None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per row: "question answer" (matching) and "question other-answer" (not), the wrong answer drawn once per
    distinct (question, answer) so the texts to encode stay few. Wrong answers come from the vocabulary and the rows'
    own answers: an answer outside the vocabulary must also appear as a wrong one, or the head learns that such
    answers always match. ``text(question, answer)`` makes the text (the model's `_itm_text`, as multiple choice
    scores candidates): it keeps the answer whole when the question is long, where cutting "question answer" at the
    tower's limit dropped the answer and made a row's matching and wrong texts the same."""
    text = text or (lambda question, answer: f"{question} {answer}")
    rng = np.random.default_rng(seed)
    answers = list(dict.fromkeys([*answers, *(r.answer for r in rows)]))
    texts: dict[str, int] = {}
    negative: dict[tuple[str, str], str] = {}
    pos, neg = [], []
    for r in rows:
        if (r.question, r.answer) not in negative:
            key = comparable_answer(r.answer)  # 'two' is no wrong answer to a row answered '2'
            others = [a for a in answers if comparable_answer(a) != key] or answers
            negative[(r.question, r.answer)] = others[int(rng.integers(len(others)))]
        pos.append(texts.setdefault(text(r.question, r.answer), len(texts)))
        neg.append(texts.setdefault(text(r.question, negative[(r.question, r.answer)]), len(texts)))
    return list(texts), np.asarray(pos, np.int64), np.asarray(neg, np.int64)


def feature_eval(model: FusionEncoder, data: EncodedQA, feats: np.ndarray, states: np.ndarray,
                 lengths: np.ndarray) -> dict:
    """Accuracy overall and per answer type on cached features: {"val/accuracy": .., "val/acc_yes/no": ..}. One
    error when the model scores a question's answers as NaN or inf: the argmax of NaN logits is the first answer,
    often the commonest, and a diverged epoch scored so was kept as the best model."""
    best, prob = predict_features(model, feats, states, lengths, data.row_image, data.row_question)
    bad = int((~np.isfinite(prob)).sum())
    if bad:
        raise PolymodalError(f"validation: the model scores the answers to {bad:,} of the {len(prob):,} questions as "
                             f"NaN or inf: {BROKEN}; {LOWER_LR}, or check --model; the run keeps its last checkpoint, "
                             "if any")
    m = accuracy_by_type([model.answers[b] for b in best], data.rows)
    return {"val/accuracy": m["accuracy"], **{f"val/acc_{t}": v for t, v in m["per_type"].items()}}


# -- the recipe -----------------------------------------------------------------------------------------------------


def build_vqa_model(recipe: VQARecipe, train_rows: Sequence[QARow]) -> FusionEncoder:
    """A new fusion encoder over the training answers, or the one in the folder ``recipe.model``: continued as
    is, or -- for an encoder from `polymodal train pretrain`, which has no VQA head, or with ``new_head`` -- with
    a fresh VQA head over the training answers (its pretraining MLM/MRM heads are dropped). ``freeze`` parts stop
    training."""
    keeps_answers = False  # the folder's answer vocabulary, kept: rows with other answers cannot train
    fresh: list[str] = []  # heads this run makes for a continued model: random, so freezing them keeps them random
    if recipe.model == "new":
        model = FusionEncoder(replace(recipe.arch, answers=answer_vocabulary(train_rows, recipe.min_answer_count,
                                                                            recipe.max_answers)))
        recipe.arch = model.config  # what was built (answers, fusion defaults) is what train_config.json records
    else:  # a folder, or a built-in name (easy-vqa)
        model = load_fusion_encoder(continued_folder(recipe.model, "vqa"))  # its answer vocabulary stays
        model.drop_pretraining_heads()  # MLM / MRM heads of a pretrained encoder do not train here
        keeps_answers = bool(model.answers) and not recipe.new_head
        if not keeps_answers:  # fine-tune a pretrained encoder: a fresh head over these answers
            model.add_vqa_head(answer_vocabulary(train_rows, recipe.min_answer_count, recipe.max_answers))
            fresh.append("vqa")
        if recipe.itm_weight > 0:
            fresh += ["itm"] if model.itm is None else []
            model.add_itm_head()
        recipe.arch = model.config
    frozen_fresh = [p for p in fresh if p in recipe.freeze]
    if frozen_fresh:
        why = {"vqa": "the VQA head is made for this run (--new-head, or an encoder that was only pretrained)",
               "itm": "the ITM head is added by this run (--itm-weight on a model without one)"}
        raise PolymodalError(f"--freeze {','.join(frozen_fresh)}: {'; '.join(why[p] for p in frozen_fresh)}, so it "
                             "starts random and would stay random; drop it from --freeze (freeze= in Python)")
    name_after_run(model, recipe.out)
    freeze_parts(model, recipe.freeze, recipe.model)
    if recipe.itm_weight > 0 and model.itm is None:
        raise PolymodalError("itm_weight > 0 needs an ITM head: set itm_head: true in arch (or --itm-head)")
    model.keeps_folder_answers = keeps_answers
    model.fresh_itm_head = "itm" in fresh  # untrained at epoch 0: not saved with the model as it came
    return model


def check_same_validation(out: Path, recipe: VQARecipe) -> None:
    """--resume: the epoch kept is the best validation accuracy so far. --val-qa given to a run that split its own
    validation photos would train on the photos that validated it (and one that validated on nothing compares
    accuracy with the training loss); said before the data is read. Other questions in --val-qa are refused once
    they are read (check_same_validation_set), as another --val-fraction is."""
    changed = switched_validation(recorded_settings(out), "val_qa", absolute_paths(recipe, ("val_qa",))["val_qa"])
    if changed:
        raise another_run(out, changed)


def _validation_rows(rows: Sequence[QARow]) -> list[tuple]:
    # annotators' answers normalised, as rows held them before they were kept as written: a resumed run's check
    return [(r.image, r.question, r.answer, "|".join(map(normalize_answer, r.answers)), "|".join(r.choices))
            for r in rows]


def layers_under_heads_train(model: FusionEncoder) -> bool:
    """Whether the projections or the fusion, which every head reads, train in this run."""
    under = set(FREEZABLE["projections"]) | set(FREEZABLE["fusion"])
    return any(p.requires_grad for n, p in model.named_parameters() if n.split(".")[0] in under)


def warn_of_a_drifting_itm_head(model: FusionEncoder, itm_weight: float, name: str) -> bool:
    """A continued model's ITM head that this run does not train (itm_weight 0) while the projections or fusion
    under it do: its scores drift, and multiple choice uses them for choices outside the answer vocabulary.
    Warned of (not dropped): a drifted head still ranks those choices, where no head would score them all 0."""
    if model.itm is None or itm_weight > 0 or not layers_under_heads_train(model):
        return False
    log.warning("%s's image-text matching (ITM) head does not train in this run (itm_weight 0) but the layers under "
                "it do, so its scores drift; multiple choice uses them for choices outside the answer vocabulary. "
                "Pass --itm-weight (e.g. 0.5; itm_weight in Python) to train it too, or %s to keep it as it is",
                name, FREEZE_UNDER_HEADS)
    return True


def train_vqa(recipe: VQARecipe, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or continue training) a fusion encoder; returns the best validation metrics plus timings."""
    t_start = time.perf_counter()
    check_fusion_start(recipe, "vqa", resume, overwrite)
    if resume:
        check_same_validation(Path(recipe.out), recipe)
    set_seed(recipe.train.seed)
    with only_splits(recipe.split):
        train_rows = read_qa(recipe.qa)
    # the questions are encoded before the split, as one list no --seed changes (a list per split was a new cache
    # entry for every seed, all its questions encoded again); sorted, so the rows' order changes nothing either
    questions = {q: i for i, q in enumerate(sorted({r.question for r in train_rows}))}
    if recipe.val_qa:
        with only_splits(recipe.val_split, "--val-split"):
            val_rows = read_qa(recipe.val_qa)
        warn_of_shared_photos([r.image for r in train_rows], [r.image for r in val_rows], "--val-qa")
    elif recipe.val_fraction > 0:
        train_rows, val_rows = split_by_image(train_rows, recipe.val_fraction, recipe.train.seed)
    else:
        val_rows = []

    if resume and recipe.model == "new":  # a continued model's fusion comes from its folder, not from arch
        check_same_fusion(Path(recipe.out), recipe.arch)
    model = build_vqa_model(recipe, train_rows)
    validation = validation_record(None, _validation_rows(val_rows), "questions")
    if resume:
        # the vocabulary ("answers") is checked once the unreadable rows are out (check_same_answers)
        check_same_run(Path(recipe.out), recipe.arch, recipe.train, ignore=("answers",), freeze=recipe.freeze,
                       val_fraction=None if recipe.val_qa else recipe.val_fraction,
                       seed_draws_validation=not recipe.val_qa and recipe.val_fraction > 0)
        check_same_validation_set(Path(recipe.out), validation)
    train, feats = readable_qa(model, train_rows, ",".join(map(str, recipe.qa)), progress)
    if len(train.rows) < len(train_rows):  # the answer vocabulary comes from the readable rows alone
        train_rows = train.rows
        set_seed(recipe.train.seed)
        model = build_vqa_model(recipe, train_rows)
    if resume:
        saved = recorded_settings(Path(recipe.out))
        because = [] if model.keeps_folder_answers or not isinstance(saved, dict) else [
            (k, saved[k], getattr(recipe, k)) for k in ("min_answer_count", "max_answers")
            if k in saved and saved[k] != getattr(recipe, k)]  # they build a new head's vocabulary
        check_same_answers(Path(recipe.out), model.answers, because)
    targets = answer_targets(model.answer_index, train_rows)
    if (targets < 0).all():
        raise PolymodalError("no training answer is in the model's answer vocabulary")
    unknown = sorted({r.answer for r, t in zip(train_rows, targets) if t < 0})
    if unknown and getattr(model, "keeps_folder_answers", False):  # a new head leaves out rare answers on purpose
        trains = "they train through the ITM loss alone (the ITM head then scores them as multiple choices)" if recipe.itm_weight > 0 \
            else "they do not train"
        log.warning("%d of %d training rows have answers outside %s's %d answers (%s): %s, and the model can never "
                    "give them as open answers; pass --new-head (new_head=True in Python) for a fresh head over "
                    "this data's answers",
                    int((targets < 0).sum()), len(targets), recipe.model, len(model.answers),
                    ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""),
                    trains)
    warn_of_a_drifting_itm_head(model, recipe.itm_weight, recipe.model)
    log.info("train: %d questions over %d images (%d answers); val: %d questions",
             len(train_rows), len(train.images), len(model.answers), len(val_rows))
    train, q_states, q_len = asked_features(model, questions, train, progress)
    itm = None
    if recipe.itm_weight > 0:
        texts, row_pos, row_neg = _itm_texts(train_rows, model.answers, recipe.train.seed, model._itm_text)
        itm = (*question_features(model, texts, progress=progress), row_pos, row_neg)
    dataset = ImageQuestionSet(feats, q_states, q_len, train.row_image, train.row_question, targets, itm,
                               seed=recipe.train.seed)
    per_image = dataset.rows / max(1, len(dataset))
    images_per_batch = max(1, min(len(dataset), round(recipe.batch_size / per_image)))
    loader = DataLoader(dataset, batch_size=images_per_batch, sampler=dataset.sampler, collate_fn=dataset.collate,
                        num_workers=recipe.workers)

    eval_fn = None
    if val_rows:
        val, val_feats = readable_qa(model, val_rows, ",".join(map(str, recipe.val_qa or recipe.qa)), progress)
        val_rows = val.rows
        # rare answers left out of the vocabulary (--min-answer-count, --max-answers) or a continued model's other
        # answers: validation scores them wrong, which caps val/accuracy below 1.0 with nothing said
        warn_of_answers_outside(model, val_rows, "validation questions", "val/accuracy counts them as wrong")
        val, val_states, val_len = asked_features(model, questions, val, progress)
        eval_fn = lambda m: feature_eval(m, val, val_feats, val_states, val_len)  # noqa: E731
    t_cached = time.perf_counter()

    objective = VQAObjective(recipe.label_smoothing, recipe.itm_weight)
    trainer = Trainer(model, {"vqa": (objective, 1.0, loader)}, recipe.train, recipe.out, eval_fn, progress)
    out = Path(recipe.out)
    settings = asdict(recipe) | absolute_paths(recipe, ("qa", "val_qa"), ("model",)) | {
        "train_questions": len(train_rows), "train_images": len(train.images), "val_questions": len(val_rows),
        "images_per_batch": images_per_batch,
        "validation": validation if val_rows else None}
    settings["arch"]["answers"] = len(model.answers)  # the vocabulary itself is in model/config.json
    # beside each saved model (with the validation photos that chose it): `eval` warns when it scores them
    photos = TrainingPhotos(train.images, recipe.model, val.images if eval_fn else (),
                            earlier=out / "model" if resume else None,
                            settings=settings, call=python_call(train_vqa, recipe, resume), trainer=trainer)
    best = fit_and_save(trainer, photos, settings, resume, overwrite,
                        score_start=model.keeps_folder_answers)  # a head made for this run is random: nothing to keep
    t_end = time.perf_counter()
    return {**best, "cache_seconds": t_cached - t_start, "train_seconds": t_end - t_cached,
            "epochs_run": trainer.epoch}
