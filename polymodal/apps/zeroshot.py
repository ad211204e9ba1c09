"""Zero-shot classification: label prompts embedded once (cached), images ranked against them."""

from __future__ import annotations

import itertools
import logging
import sys
import unicodedata
from collections import OrderedDict
from typing import Sequence

import numpy as np

from polymodal.apps.templates import check_template
from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError
from polymodal.models.inputs import as_texts, check_count

log = logging.getLogger(__name__)


class WeightsWatch:
    """Whether a model's torch weights changed since the last look: an optimizer step, load_state_dict or any
    in-place edit bumps a tensor's version counter, and a module swapped in at the top two levels
    (``model.text_tower = ...``) brings other tensors. The tensor list is kept between looks (walking every module
    each time cost ~1 ms per classify call on lite, the versions alone ~0.06 ms), so a tensor replaced deeper
    (``load_state_dict(assign=True)``) goes unseen: call forget_label_embeddings() after one. A torch-free model
    (ONNX) never changes."""

    def __init__(self, model) -> None:
        self._model, self._layout, self._tensors, self._seen = model, None, [], None

    def changed(self) -> bool:
        torch = sys.modules.get("torch")  # never imported here: the ONNX runtime stays torch-free
        if torch is None:
            return False
        model = self._model
        modules = [model] if isinstance(model, torch.nn.Module) else [
            v for v in vars(model).values() if isinstance(v, torch.nn.Module)]
        # the modules themselves, compared by identity: held here, a freed one's address cannot be reused by its
        # replacement (`m.text = None; m.text = Linear(...)` would otherwise look unchanged)
        layout = tuple(g for m in modules for c in (m, *m.children()) for g in (c, *c.children()))
        swapped = self._layout is None or len(layout) != len(self._layout) or any(
            a is not b for a, b in zip(layout, self._layout))
        if swapped:
            self._layout = layout
            self._tensors = [t for m in modules for t in itertools.chain(m.parameters(), m.buffers())]
        state = tuple(t._version for t in self._tensors)
        changed, self._seen = swapped or state != self._seen, state
        return changed


class PromptCache:
    """LRU of label-prompt matrices, so repeated classify() calls do not re-encode the labels; emptied when the
    model's weights change (training), so classify() never ranks against label vectors of the old weights."""

    def __init__(self, model, size: int = 32) -> None:
        self._model = model
        self._size = size
        self._items: OrderedDict = OrderedDict()
        self._weights = WeightsWatch(model)  # looked at first use: a model may build its cache before its modules
        self.misses = 0

    def get(self, labels: Sequence[str], templates: Sequence[str], progress: bool = False) -> np.ndarray:
        labels, templates = tuple(str(x) for x in labels), tuple(templates)
        if not labels:
            raise PolymodalError("no labels given; pass at least one label: --labels cat,dog, or ['cat', 'dog'] "
                                 "in Python")
        blank = next((i for i, label in enumerate(labels) if is_blank(label)), None)
        if blank is not None:  # a blank prompt ("a photo of a .") is near every image and takes the softmax
            raise PolymodalError(f"label {blank} is empty; every label needs some text (drop the blank one a "
                                 "trailing comma or an empty line leaves)")
        for t in templates:
            check_template(t)
        key = (labels, templates)
        if self._weights.changed():  # trained or reloaded since: every cached matrix is stale
            self._items.clear()
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        prompts = class_prompts(labels, templates)
        if progress:  # a dataset's 1,000 classes x 4 templates: half a minute of MiniLM on 2 cores
            from polymodal.eval.retrieval import encode_captions

            emb = encode_captions(self._model, prompts, progress=True, desc="class prompts")
        else:
            emb = self._model.encode_text(prompts)
        emb = averaged_prompts(emb, len(labels), len(templates))
        self._items[key] = emb
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return emb


def class_prompts(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Each label in each template, label by label (what averaged_prompts folds back)."""
    return [t.replace("{}", label) for label in labels for t in templates]  # never raises on other braces


def averaged_prompts(emb: np.ndarray, n_labels: int, n_templates: int) -> np.ndarray:
    """class_prompts' embeddings [L * T, D] -> one unit vector per label [L, D], the mean of its templates'."""
    emb = emb.reshape(n_labels, n_templates, -1).mean(axis=1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
    return emb


def same_label(label: str) -> str:
    """What two spellings of one label share: case, surrounding spaces and Unicode form (a composed "é" or "e" plus
    an accent, as macOS and some editors write it: the same text to the tokenizer) do not make another class."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", label.strip()).casefold())


def merged_labels(labels: list[str]) -> list[str]:
    """Labels that rank_labels folds into an earlier spelling of theirs (not exact repeats), for a warning."""
    seen: dict[str, str] = {}
    merged = []
    for label in labels:
        first = seen.setdefault(same_label(label), label)
        if first != label:  # two forms of one text print alike ('café' as 'café'): say which difference it is
            form = unicodedata.normalize("NFC", label) == unicodedata.normalize("NFC", first)
            merged.append(f"{label!r} as {first!r}" + (" (the same text, an accent encoded another way)" * form))
    return merged


def first_spellings(labels: list[str]) -> list[int]:
    """The index of each label's first spelling, in the order given (what rank_labels keeps)."""
    first: dict[str, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(same_label(label), i)
    return list(first.values())


def distinct_labels(labels: list[str]) -> list[str]:
    """Each label once, spelled as first given."""
    return [labels[i] for i in first_spellings(labels)]


def merged_labels_note(labels: list[str]) -> str:
    """The warning for labels that rank_labels folds into an earlier spelling, or "" when none is."""
    merged = merged_labels(labels)
    if not merged:
        return ""
    more = f"; and {len(merged) - 3} more" if len(merged) > 3 else ""
    return "labels differing only in case or spaces are one label: " + "; ".join(merged[:3]) + more


def alike_labels_note(labels: list[str], label_emb: np.ndarray) -> str:
    """The warning for distinct labels the model embeds alike, or "" when none are: its text tower reads them as the
    same word pieces (emoji, most Chinese characters: one [UNK] piece to the bundled MiniLM), so they score the same
    for every image, listed in the order given, and the table reads as a choice the model never made."""
    emb = np.asarray(label_emb, dtype=np.float32)
    groups, taken = [], set()
    for start in range(0, len(labels), 1024):  # in blocks: 21k classes at once would be a 1.7 GB matrix
        same = emb[start : start + 1024] @ emb.T >= 1 - 1e-5  # unit vectors, alike up to another batch's rounding
        for i in range(start, min(start + 1024, len(labels))):
            group = [j for j in np.flatnonzero(same[i - start]) if j >= i and j not in taken] if i not in taken else []
            if len(group) > 1:
                taken.update(group)
                groups.append(", ".join(repr(labels[j]) for j in group[:4]) + (" ..." if len(group) > 4 else ""))
    if not groups:
        return ""
    more = f"; and {len(groups) - 3} more" if len(groups) > 3 else ""
    return ("labels the model cannot tell apart (its text tower reads them as the same words, e.g. ones outside its "
            "vocabulary such as emoji) score the same for every image: " + "; ".join(groups[:3]) + more +
            "; name them in words it knows")


def rank_labels(
    image_emb: np.ndarray, label_emb: np.ndarray, labels: list[str], logit_scale: float, top_k: int | None = None
) -> list[list[tuple[str, float]]]:
    # a label given twice is one label, spelled as first given: two copies would split its probability and show
    # up twice. "Dog" and "dog " are one label too, as `eval zeroshot` counts them (one class)
    keep = first_spellings(labels)
    if len(keep) < len(labels):
        labels, label_emb = [labels[i] for i in keep], np.asarray(label_emb)[keep]
    logits = logit_scale * image_emb @ label_emb.T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    k = len(labels) if top_k is None else min(top_k, len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # tied labels (alike to the model) in the order given
    return [[(labels[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


class ZeroShotMixin:
    """label_embeddings() and classify() for any model with encode_image/encode_text and a logit_scale
    (shared by the PyTorch models and the torch-free ONNX runtime)."""

    DEFAULT_TEMPLATES = ("a photo of a {}.",)

    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] | None = None,
                         progress: bool = False) -> np.ndarray:
        """[L, dim] prompt-ensemble embeddings, cached per (labels, templates); one string is one label.
        ``progress`` shows a bar while the prompts are encoded."""
        labels = as_texts(labels, "labels")
        templates = None if templates is None else as_texts(templates, "templates")
        if templates == []:  # `or` below would take the default for it, unasked
            raise PolymodalError(f"templates is empty; pass templates=None for the model's default "
                                 f"{list(self.DEFAULT_TEMPLATES)!r}, or at least one template with '{{}}' where the "
                                 "label goes, e.g. ['a photo of a {}.']")
        if "_prompts" not in self.__dict__:
            self._prompts = PromptCache(self)
        return self._prompts.get(labels, templates or self.DEFAULT_TEMPLATES, progress=progress)

    def forget_label_embeddings(self) -> None:
        """Drops cached label embeddings. Training and reloading are noticed without it (WeightsWatch); call it
        after a deeper replacement of tensors, or when encode_text now reads other state."""
        self._prompts = PromptCache(self)

    def classify(self, images, labels: Sequence[str], templates: Sequence[str] | None = None,
                 top_k: int | None = None) -> list[list[tuple[str, float]]]:
        """For each image, labels ranked by softmax(logit_scale * cosine), best first: [(label, score), ...]."""
        given = labels
        labels, top_k = as_texts(labels, "labels"), check_count(top_k, "top_k", "all labels")
        if isinstance(given, str):  # classify(img, "cat,dog") is one label, and a softmax over one label is 1.0
            split = f"; to give several, pass a list, e.g. {given!r}.split(',')" if "," in given else ""
            log.warning("classify() got one label (%r): every image scores 1.0 with it, since scores are shared out "
                        "among the labels%s", given, split)
        note = merged_labels_note(labels)
        if note:
            log.warning("%s", note)
        label_emb = self.label_embeddings(labels, templates)
        if self.__dict__.get("_alike_noted") != (labels, templates):  # once for labels classified batch by batch
            self._alike_noted = (labels, templates)
            keep = first_spellings(labels)
            if note := alike_labels_note([labels[i] for i in keep], label_emb[keep]):
                log.warning("%s", note)
        return rank_labels(self.encode_image(images), label_emb, labels, self.logit_scale, top_k)
