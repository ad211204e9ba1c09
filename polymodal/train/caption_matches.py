"""Which captions describe which image in a `PairSet`, kept as flat id lists with offsets: pretraining's ITM
negatives and hard-negative mining ask it a row block at a time. The [images, captions] bool matrix it replaces
grew with images x captions: 1.9 GB held for a whole run at 100k captions, ~67 GiB at 600k (COCO scale)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from polymodal.data.pairs import PairSet


def normalize_text(text: str) -> str:
    return " ".join(str(text).lower().replace(" .", "").split()).rstrip(".")


def _offsets(owner: np.ndarray, count: int) -> np.ndarray:
    """[count + 1] offsets of each owner's run in ``owner`` (sorted)."""
    return np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=count))]).astype(np.int64)


def _spans(offsets: np.ndarray, values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r, value) for each of key r's values, r = 0..len(keys) - 1."""
    start, length = offsets[keys], offsets[keys + 1] - offsets[keys]
    row = np.repeat(np.arange(len(keys)), length)
    at = np.arange(int(length.sum())) - np.repeat(np.cumsum(length) - length, length) + np.repeat(start, length)
    return row, values[at]


def _block(offsets: np.ndarray, values: np.ndarray, keys: np.ndarray, width: int) -> np.ndarray:
    """[len(keys), width] bool: row r is True at key r's values."""
    out = np.zeros((len(keys), width), dtype=bool)
    out[_spans(offsets, values, keys)] = True
    return out


@dataclass(frozen=True)
class CaptionMatches:
    """Caption c matches image i when image i has a caption of c's text: its own caption, or the same text as
    one of i's captions (duplicate captions across images are not negatives). Holds each caption's text id,
    each image's text ids (sorted) and each text's images (sorted), flat with offsets: O(captions)."""

    text_id: np.ndarray  # [C]
    image_offsets: np.ndarray  # [N + 1]: image i's texts are image_texts[image_offsets[i]:image_offsets[i + 1]]
    image_texts: np.ndarray
    text_offsets: np.ndarray  # [T + 1]: text t's images are text_images[text_offsets[t]:text_offsets[t + 1]]
    text_images: np.ndarray

    @classmethod
    def of(cls, pairs: PairSet) -> CaptionMatches:
        texts: dict[str, int] = {}
        text_id = np.asarray([texts.setdefault(normalize_text(c), len(texts)) for c in pairs.captions], dtype=np.int64)
        images, n_texts = len(pairs.images), len(texts)
        image = np.asarray(pairs.caption_image, dtype=np.int64)
        by_image = np.unique(image * n_texts + text_id)  # each (image, text) once, by image then text
        by_text = np.unique(text_id * images + image)  # each (text, image) once, by text then image
        return cls(text_id, _offsets(by_image // max(n_texts, 1), images), by_image % max(n_texts, 1),
                   _offsets(by_text // max(images, 1), n_texts), by_text % max(images, 1))

    @property
    def images(self) -> int:
        return len(self.image_offsets) - 1

    def image_rows(self, images: np.ndarray) -> np.ndarray:
        """[len(images), C] bool: the captions matching each of ``images``."""
        texts = _block(self.image_offsets, self.image_texts, np.asarray(images), len(self.text_offsets) - 1)
        return texts[:, self.text_id]

    def caption_rows(self, captions: np.ndarray) -> np.ndarray:
        """[len(captions), N] bool: the images matching each of ``captions``."""
        return _block(self.text_offsets, self.text_images, self.text_id[np.asarray(captions)], self.images)

    def image_captions(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(r, caption) for each caption matching ``images[r]``: the True cells of ``image_rows(images)``, sparse
        (~5 a COCO image; the dense rows were a pass over every caption)."""
        at, texts = _spans(self.image_offsets, self.image_texts, np.asarray(images))
        of_text, captions = _spans(*self._text_captions, texts)
        return at[of_text], captions

    @cached_property
    def _text_captions(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets [T + 1], captions by text): text t's captions are captions[offsets[t]:offsets[t + 1]]."""
        return _offsets(self.text_id, len(self.text_offsets) - 1), np.argsort(self.text_id, kind="stable")

    def matches(self, image: int, caption: int) -> bool:
        texts = self.image_texts[self.image_offsets[image] : self.image_offsets[image + 1]]
        return bool((texts == self.text_id[caption]).any())

    @cached_property
    def captions_per_image(self) -> np.ndarray:
        """[N]: how many captions match each image."""
        per_text = np.bincount(self.text_id, minlength=len(self.text_offsets) - 1)
        owner = np.repeat(np.arange(self.images), np.diff(self.image_offsets))
        return np.bincount(owner, weights=per_text[self.image_texts], minlength=self.images).astype(np.int64)

    @cached_property
    def images_per_caption(self) -> np.ndarray:
        """[C]: how many images match each caption."""
        return np.diff(self.text_offsets)[self.text_id]
