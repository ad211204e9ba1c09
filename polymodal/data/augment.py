"""Training-time image augmentation on PIL images, applied BEFORE `ImageTransform`.

`Augment` picks a random crop box (area fraction in `scale`, aspect ratio in `ratio`) and a random horizontal
flip, and returns the cropped / flipped PIL image; the model's `ImageTransform` then resizes and centre-crops it,
so the output size is always the transform's. Every random choice comes from a numpy Generator, so results are
reproducible from a seed: `Augment(seed=0)` for a stream, `augment(img, rng=np.random.default_rng(...))` per
sample, and `views(img, n, seed)` for n fixed views (e.g. to cache image features per view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from polymodal.data.images import ImageTransform, draft_size_of, load_image
from polymodal.errors import PolymodalError

Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL crop box)


def make_rng(seed: Any = None, *keys: int) -> np.random.Generator:
    """A Generator from a seed (int, None or Generator) and optional integer keys (epoch, index, view ...)."""
    if isinstance(seed, np.random.Generator):
        if keys:
            raise PolymodalError("cannot derive keyed streams from a Generator; pass an integer seed")
        return seed
    if seed is None and not keys:
        return np.random.default_rng()
    parts = [0 if seed is None else seed, *keys]
    if not all(isinstance(p, (int, np.integer)) and p >= 0 for p in parts):
        raise PolymodalError(f"seed and keys must be non-negative integers, got {parts}")
    return np.random.default_rng([int(p) for p in parts])


def _pair(value: Any, name: str, rule: str) -> tuple[float, float]:
    """(min, max) as two floats, or one error naming the setting (not numpy's or Python's unpacking error)."""
    try:
        low, high = (float(x) for x in value)
    except (TypeError, ValueError):
        raise PolymodalError(f"Augment {name}={value!r} is invalid; pass (min, max) with {rule}") from None
    return low, high


@dataclass
class Augment:
    """Random resized crop (box only; the transform resizes) and horizontal flip with probability 0.5."""

    flip: bool = True
    random_resized_crop: bool = True
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    seed: int | None = None

    def __post_init__(self):
        s0, s1 = _pair(self.scale, "scale", "0 < min <= max <= 1")
        r0, r1 = _pair(self.ratio, "ratio", "0 < min <= max, both finite")
        if not 0.0 < s0 <= s1 <= 1.0:
            raise PolymodalError(f"Augment scale={self.scale} is invalid; pass (min, max) with 0 < min <= max <= 1")
        if not 0.0 < r0 <= r1 < math.inf:  # an infinite ratio overflowed numpy's uniform draw
            raise PolymodalError(f"Augment ratio={self.ratio} is invalid; pass (min, max) with 0 < min <= max, "
                                 "both finite")
        self.scale, self.ratio = (s0, s1), (r0, r1)
        self._rng = make_rng(self.seed)

    def params(self, size: tuple[int, int], rng: np.random.Generator | int | None = None) -> tuple[Box, bool]:
        """Random (crop box, flipped) for an image of `size` (width, height)."""
        rng = self._rng if rng is None else make_rng(rng)
        width, height = size
        box = self._crop_box(width, height, rng) if self.random_resized_crop else (0, 0, width, height)
        flipped = bool(self.flip and rng.random() < 0.5)
        return box, flipped

    @staticmethod
    def apply(image: Image.Image, box: Box, flipped: bool) -> Image.Image:
        """Crop to `box`, then mirror left-right if `flipped`."""
        if box != (0, 0, *image.size):
            image = image.crop(box)
        return image.transpose(Image.FLIP_LEFT_RIGHT) if flipped else image

    def __call__(self, image: Any, rng: np.random.Generator | int | None = None) -> Image.Image:
        """Image (path, bytes, PIL, array) -> augmented RGB PIL image. `rng` overrides the instance's stream."""
        img = load_image(image)
        box, flipped = self.params(img.size, rng)
        return self.apply(img, box, flipped)

    def decode_size(self, size: int | None) -> int | None:
        """load_image's min_size for a photo this augments, when the model's transform decodes at `size` (its
        draft_size): large enough that even the smallest random crop keeps `size` pixels on its short side, so a crop
        is never upscaled where a full decode would have shrunk it."""
        if size is None or not self.random_resized_crop:
            return size
        return math.ceil(size / math.sqrt(self.scale[0] * min(self.ratio[0], 1 / self.ratio[1]))) + 1

    def views(self, image: Any, n: int, seed: int = 0) -> list[Image.Image]:
        """n fixed augmented views: view v depends only on (seed, v), not on n or on earlier calls."""
        if n < 1:
            raise PolymodalError(f"views needs n >= 1, got {n}")
        img = load_image(image)
        return [self(img, make_rng(seed, v)) for v in range(n)]

    def _crop_box(self, width: int, height: int, rng: np.random.Generator) -> Box:
        # The RandomResizedCrop sampler (Szegedy et al. 2015; torchvision): 10 tries, then a centre crop.
        area = width * height
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_r))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, max(1, int(round(width / self.ratio[0])))
        elif in_ratio > self.ratio[1]:
            w, h = max(1, int(round(height * self.ratio[1]))), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h


def views(image: Any, n: int, seed: int = 0, augment: Augment | None = None) -> list[Image.Image]:
    """n fixed augmented views of an image (default `Augment()` settings); see `Augment.views`."""
    return (augment or Augment()).views(image, n, seed)


def view_transform(transform: Any) -> Any:
    """The transform an augmented photo goes through. Augment only picks a box and the transform resizes it; one
    that does not resize (resize 0: a CLIP processor's do_resize false) centre-cropped a box smaller than its input
    with black borders (a quarter of each view of a photo at the model's size): its views are resized to the crop,
    as torchvision's RandomResizedCrop makes them."""
    if isinstance(transform, ImageTransform) and not transform.resize:
        return replace(transform, resize=transform.crop)
    return transform


def photo_decode_size(model_or_transform: Any, augment: Augment | None) -> int | None:
    """How large a photo is decoded for a model's transform (camera JPEGs at reduced scale, see load_image), with
    room for `augment`'s random crops when the photo is augmented."""
    size = draft_size_of(model_or_transform)
    return size if augment is None else augment.decode_size(size)
