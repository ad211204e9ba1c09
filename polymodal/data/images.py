"""Image loading and numpy-only preprocessing (no torch), so exported models preprocess identically."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from polymodal.errors import PolymodalError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def load_image(image: Any) -> Image.Image:
    """Path, bytes, PIL image or HxW[xC] numpy array -> RGB PIL image (first frame of animations)."""
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            if arr.size and float(np.nanmax(arr)) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3):
            raise PolymodalError(f"image array has shape {image.shape}; pass HxW, HxWx3 or HxWx4")
        img = Image.fromarray(arr)
    elif isinstance(image, (bytes, bytearray)):
        img = _open(io.BytesIO(image), "the given bytes")
    elif isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise PolymodalError(f"image not found: {path}; pass an existing image file")
        img = _open(path, str(path))
    else:
        raise PolymodalError(
            f"cannot read an image from {type(image).__name__}; pass a path, PIL image or numpy array"
        )
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    return img.convert("RGB")


def _open(source, name: str) -> Image.Image:
    try:
        img = Image.open(source)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PolymodalError(f"not a readable image: {name} ({exc.__class__.__name__})") from exc


@dataclass(frozen=True)
class ImageTransform:
    """Resize the short side, centre-crop, scale to [0,1], normalise. Settings live in the model config."""

    resize: int = 256
    crop: int = 224
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    resample: str = "bicubic"
    # Resize only the part the centre crop keeps: the same filter taps in half the time, but box coordinates round
    # differently, so ~0.05% of pixels differ by 1/255 from resize-then-crop. Off for CLIP checkpoints (their
    # processors' pixels are matched exactly); on for the lite towers.
    crop_box: bool = False

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageTransform":
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(x) for x in d[key])
        return cls(**d)

    def pil_crop(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        # Truncate the long side as CLIP's processors (HF and torchvision) do, so CLIP checkpoints match exactly.
        if w <= h:
            nw, nh = self.resize, int(self.resize * h / w)
        else:
            nw, nh = int(self.resize * w / h), self.resize
        nw, nh = max(self.crop, nw), max(self.crop, nh)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        if not self.crop_box:
            return img.resize((nw, nh), _RESAMPLE[self.resample]).crop((left, top, left + self.crop, top + self.crop))
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        return img.resize((self.crop, self.crop), _RESAMPLE[self.resample], box=box)

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        """Images -> float32 [B, 3, crop, crop]."""
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        # (x / 255 - mean) / std as one multiply-add per pixel, straight from the uint8 pixels
        scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
        offset = (-mean / std).astype(np.float32)[:, None, None]
        out = np.empty((len(images), 3, self.crop, self.crop), dtype=np.float32)
        for i, image in enumerate(images):
            np.multiply(np.asarray(self.pil_crop(load_image(image))).transpose(2, 0, 1), scale, out=out[i])
            out[i] += offset
        return out
