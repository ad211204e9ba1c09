"""Image loading and numpy-only preprocessing (no torch), so exported models preprocess identically."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from polymodal.errors import PolymodalError
from polymodal.models.inputs import as_images, tensor_to_array

# Bumped when decoding changes pixels (2: EXIF rotation, alpha over white, 16-bit scaling; 3: 8-bit values in
# 32-bit "I" images; 4: crop-box resize of tall images in the full resize's pass order; 5: large JPEGs decoded at
# reduced scale for crop-box transforms; 6: augmented views decoded larger), so that caches of features computed
# from images are not reused across it.
LOADER_VERSION = 6
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # index, folders, shards
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS,
             "box": Image.BOX, "hamming": Image.HAMMING}
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
NEGATIVE_PIXEL_TOLERANCE = -0.01  # float pixels below this are normalised ones, not resampling's rounding
MAX_ASPECT = 1000  # longest side / shortest side beyond which an image is refused (check_image_size)
# Before the short-side resize, cut longer images to this aspect around the centre: the centre crop only keeps a
# square, and resizing a whole 1:1000 strip would allocate resize * 1000 * resize pixels. Images up to 8:1 keep
# their exact CLIP-processor pixels.
_MAX_RESIZED_ASPECT = 8
# Pillow's filter radius in source pixels when not downscaling
_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0, "lanczos": 3.0, "box": 0.5, "hamming": 1.0}


def quiet_pillow_size_warnings() -> None:
    """A photo of 89-179 MP is one the user chose to pass: the CLI decodes it without Pillow's
    DecompressionBombWarning on stderr. Set once for the process by `polymodal` (a catch_warnings() per image would
    reset Python's show-once memory for every other warning, and is not thread-safe); a Python program keeps
    Pillow's warning, since importing a library should not change its filters. Above 179 MP Pillow still refuses
    the image (_pillow_errors); the server has its own, lower pixel limit."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@functools.cache
def _pillow_orders_passes() -> bool:
    """Whether this Pillow runs the vertical pass first when the height shrinks much more than the width (13+)."""
    img = Image.fromarray((np.indices((12, 3)).sum(0) % 2 * 255).astype(np.uint8))  # a checkerboard clips either way
    vertical_first = img.resize((3, 4), Image.BICUBIC).resize((2, 4), Image.BICUBIC).tobytes()
    horizontal_first = img.resize((2, 12), Image.BICUBIC).resize((2, 4), Image.BICUBIC).tobytes()
    return img.resize((2, 4), Image.BICUBIC).tobytes() == vertical_first != horizontal_first


def _vertical_first(w: int, h: int, out_w: int, out_h: int) -> bool:
    """Whether Pillow's resize of a w x h image (any box) to out_w x out_h runs its vertical pass first."""
    return _pillow_orders_passes() and 0 < h - out_h and h - out_h > 2 * (w - out_w)


def load_image(image: Any, min_size: int | None = None) -> Image.Image:
    """Path, bytes, binary file object, PIL image or HxW[xC] numpy array (or torch tensor) -> RGB PIL image (first
    frame of animations). With ``min_size``, a JPEG file or bytes may decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling) while both sides stay at least min_size pixels: a 12 MP camera photo that a model shrinks to 224 pixels
    anyway decodes several times faster (ImageTransform.draft_size says what a transform needs)."""
    image = tensor_to_array(image)
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        _check_not_normalised(image)
        arr = _to_uint8(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise PolymodalError(f"image array has shape {image.shape}; pass one image as HxW, HxWx1, HxWx3, HxWx4 "
                                 "or CxHxW (C 1, 3 or 4), or several as a list or an [N, H, W, C] array")
        img = Image.fromarray(arr)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        img = _open(io.BytesIO(image), "the given bytes", min_size)
    elif hasattr(image, "read"):  # a file object: read here, so a stream that cannot seek decodes too
        name = str(getattr(image, "name", "the given file object"))
        data = None if isinstance(image, io.TextIOBase) else image.read()  # text mode fails on a JPEG's bytes
        if not isinstance(data, (bytes, bytearray)):
            raise PolymodalError(f"{name} is open in text mode; open image files in binary mode: open(path, 'rb')")
        img = _open(io.BytesIO(data), name, min_size)
    elif isinstance(image, (str, Path)):
        path = _existing_file(image)
        try:
            return to_rgb(_open(path, str(path), min_size))
        except PolymodalError as exc:  # a float TIFF holding NaN: say which file
            if str(path) in str(exc):
                raise  # (wrapped again, a notebook's traceback showed the same error twice, chained to itself)
            raise PolymodalError(f"{path}: {exc}") from exc.__cause__
    else:
        raise PolymodalError(
            f"cannot read an image from {type(image).__name__}; pass a path, PIL image or numpy array"
        )
    return to_rgb(img)


def draft_size_of(model_or_transform: Any) -> int | None:
    """The load_image min_size a model's (or a transform's) ImageTransform allows; None (full size) for anything
    else, e.g. a custom transform or a model without one."""
    transform = getattr(model_or_transform, "transform", model_or_transform)
    return getattr(transform, "draft_size", None)


def check_image_file(path: str | Path) -> None:
    """What load_image would refuse about an image file, read from its header (no pixels decoded): missing, a
    folder, no image format Pillow knows, an extreme shape. A command over many files calls it on each first, so a
    mistake stops it before a model loads; a file damaged past its header still fails when it is decoded.
    A JPEG past Pillow's pixel limit passes: the models that draft (see open_image) read it at reduced scale."""
    path = _existing_file(path)
    with _pillow_errors(str(path)), open_image(path, 1) as img:
        w, h = img.size
    check_image_size(w, h, str(path))


def _existing_file(path: str | Path) -> Path:
    # here, not in load_image only: check_image_file (classify's and caption's header check) said "image not found"
    if isinstance(path, str) and _URL.match(path):  # Path() would also eat one slash of "https://"
        raise PolymodalError(
            f"{path} is a URL; polymodal works offline and does not download images: download the file first "
            "and pass its local path"
        )
    path = Path(path)
    if path.is_dir():  # "not found" would send the user looking for a path that is right there
        raise PolymodalError(f"{path} is a folder, not an image file; pass an image file inside it "
                             "(`polymodal index` takes folders)")
    if not path.is_file():
        raise PolymodalError(f"image not found: {path}; pass an existing image file")
    return path


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded image as the RGB pixels a viewer shows: first frame, EXIF rotation applied, 16-bit and float
    samples scaled to 8 bits, transparency over white. Shared by load_image and the service's uploads. A caller's
    animation left on a later frame is left there again (this reads its first frame)."""
    frame = img.tell() if getattr(img, "n_frames", 1) > 1 else 0
    if frame:
        img.seek(0)
        try:
            return _first_frame_rgb(img)
        finally:
            img.seek(frame)
    return _first_frame_rgb(img)


def _first_frame_rgb(img: Image.Image) -> Image.Image:
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # phones store photos sideways plus this tag
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":  # convert("RGB") would clip these samples at 255
        arr = np.asarray(img)
        # 16-bit files open as I;16*; plain 32-bit "I" is 16-bit data from older readers (PGM) or, with nothing
        # above 255, 8-bit values in an int array (Image.fromarray of int32), which would otherwise turn black
        sixteen_bit = img.mode.startswith("I;16") or (img.mode == "I" and arr.size and int(arr.max()) > 255)
        img = Image.fromarray(_to_uint8(arr, sixteen_bit=bool(sixteen_bit)))
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        # Dropping alpha leaves whatever colour hides under it (often black); show it on white like a viewer
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    return img.convert("RGB")


def _check_not_normalised(arr: np.ndarray) -> None:
    """Refuse pixels below 0: a mean/std-normalised tensor (a torchvision pipeline's, or a model's own transform
    output) would otherwise be clipped to a dark image and embed as something else, silently."""
    if arr.dtype.kind == "f" and arr.size and np.isfinite(arr).all() and float(arr.min()) < NEGATIVE_PIXEL_TOLERANCE:
        raise PolymodalError(
            f"the image array holds negative values (down to {float(arr.min()):.3g}): it looks normalised "
            "(mean subtracted, divided by std); pass raw pixels (0-255, or 0-1 floats), or pass already "
            "preprocessed [B, 3, H, W] pixels (the model's transform output) to model.embed_pixels(); 0-1 pixels "
            "that resizing pushed out of range: clip them (np.clip(x, 0, 1) or x.clamp(0, 1))")


def _to_uint8(arr: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """Pixel samples -> uint8. 16-bit ones (uint16, or Pillow's 32-bit 'I' holding 16-bit PNG/TIFF data) keep
    their high byte, as Pillow does for 16-bit RGB files; floats (and booleans) in [0, 1] are scaled by 255 (up to
    1.01, clipped), floats from 1.01 to 2 are refused (0-1 pixels pushed past 1, which as 0-255 ones would be a
    black image); the rest is clipped. Integers are 0-255 whatever their values: an int64 mask of 0s and 1s is as
    dark as the same mask in uint8 (before, it was scaled, and the same pixels embedded differently by dtype)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():  # NaN would cast to arbitrary bytes
        raise PolymodalError(f"the image array holds {int((~np.isfinite(arr)).sum()):,} NaN or infinite values; "
                             "pass finite pixel values (0-255, or 0-1 floats)")
    if sixteen_bit or (arr.dtype.kind == "u" and arr.dtype.itemsize == 2):
        return (np.clip(arr, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
    top = float(np.nanmax(arr)) if arr.dtype.kind in "fb" and arr.size else None
    if top is not None and top <= 1.0 - NEGATIVE_PIXEL_TOLERANCE:  # 0-1 pixels, resampling's rounding included
        arr = np.clip(arr, 0.0, 1.0) * 255.0
    elif top is not None and top < 2.0:  # as 0-255 pixels this is a black image: 0-1 ones pushed past 1
        raise PolymodalError(f"the image array's float values go up to {top:.3g}: 0-1 pixels must stay within 1 "
                             "(clip them: np.clip(x, 0, 1) or x.clamp(0, 1)), and 0-255 pixels would make this a "
                             "black image; pass 0-1 or 0-255 values")
    return np.clip(arr, 0, 255).astype(np.uint8)


def check_image_size(w: int, h: int, name: str = "image") -> None:
    """Refuse degenerate shapes: a 1x40000 strip is no picture, and resizing it for a model would take gigabytes."""
    if w < 1 or h < 1 or max(w, h) > MAX_ASPECT * min(w, h):
        raise PolymodalError(
            f"{name} is {w}x{h} pixels; images need both sides at least 1 pixel and an aspect ratio within "
            f"1:{MAX_ASPECT}; crop or pad it to a less extreme shape"
        )


def _open(source, name: str, min_size: int | None = None) -> Image.Image:
    with _pillow_errors(name):
        img = open_image(source, min_size)
        if min_size:
            img.draft(None, (min_size, min_size))  # JPEG only (other formats ignore it); before any pixel is decoded
        img.load()
    # refused here, where the file's name is known: the transform's own check could only say "image is 2000x1"
    # and, being no reading error, ended a training run instead of leaving the photo out as unreadable
    check_image_size(*img.size, name)
    return img


_JPEG_START = b"\xff\xd8\xff"  # SOI and the next marker's first byte


def open_image(source, min_size: int | None = None, formats=None) -> Image.Image:
    """Image.open, except that a JPEG past Pillow's pixel limit (179 MP; a 200 MP phone photo is 16320x12240) is
    opened too when ``min_size`` lets it decode at reduced scale (1/2 to 1/8) to fewer pixels than that limit:
    Pillow's limit guards decoded pixels. Anything else past the limit raises Pillow's DecompressionBombError."""
    try:
        return Image.open(source, formats=formats)
    except Image.DecompressionBombError:
        img = _drafted_jpeg(source, min_size) if min_size else None
        if img is None:
            raise
        return img


def _drafted_jpeg(source, min_size: int) -> Image.Image | None:
    """A path, bytes or file object holding a JPEG -> the image drafted to ``min_size``; None when it is no JPEG,
    or still too large at 1/8 scale."""
    from PIL import JpegImagePlugin

    if isinstance(source, (bytes, bytearray)):
        fp = io.BytesIO(source)
    elif hasattr(source, "read"):
        fp = source
    else:
        with open(source, "rb") as f:  # only a JPEG is read whole (a 600 MB PNG is refused from its first bytes)
            head = f.read(3)
            fp = io.BytesIO(head + f.read()) if head == _JPEG_START else None
    if fp is None or (fp.seek(0), fp.read(3))[1] != _JPEG_START:  # not a JPEG: nothing decodes it smaller
        return None
    fp.seek(0)
    img = JpegImagePlugin.jpeg_factory(fp)
    img.draft(None, (min_size, min_size))
    return None if img.width * img.height > 2 * (Image.MAX_IMAGE_PIXELS or math.inf) else img


@contextlib.contextmanager
def _pillow_errors(name: str):
    """Pillow's reading errors -> one PolymodalError naming the file; past Pillow's pixel limit, say to downscale."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise PolymodalError(f"not a readable image: {name} is larger than Pillow decodes safely "
                             f"({_reason(exc).split(', could be')[0]}); downscale it first") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PolymodalError(f"not a readable image: {name} ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    """Pillow's reason ("image file is truncated ...") without the file name it sometimes repeats."""
    text = re.split(r" '| <", str(exc))[0].strip()  # "... file '/path'" or "... file <_io.BytesIO object at 0x..>"
    return text or exc.__class__.__name__


@dataclass(frozen=True)
class ImageTransform:
    """Resize the short side, centre-crop, scale to [0,1], normalise. Settings live in the model config."""

    resize: int = 256  # the short side's length before the crop; 0: no resize (a CLIP processor's do_resize false)
    crop: int = 224
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    resample: str = "bicubic"
    # Resize only the part the centre crop keeps: the same filter taps in half the time. Pillow takes the box as
    # 32-bit floats, so its taps' weights round differently from resize-then-crop: ~0.01% (photos) to ~0.2% (noise)
    # of pixel values differ by 1/255, and about one in five million by 2/255. The pass order could cost more (up to
    # ~25/255 on tall images); _box_resize keeps the full resize's. Off for CLIP checkpoints (their processors' pixels
    # are matched exactly); on for the lite towers, fusion encoders and captioners. On, large JPEGs also decode at
    # reduced scale (draft_size).
    crop_box: bool = False

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageTransform":
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(x) for x in d[key])
                if len(d[key]) != 3:
                    raise ValueError(f"transform {key} needs 3 values (R, G, B), got {len(d[key])}")
        # checked here, not on the first photo: an unknown name was a KeyError traceback from deep in preprocessing
        if d.get("resample", cls.resample) not in _RESAMPLE:
            raise ValueError(f"transform resample {d['resample']!r} is not one of {', '.join(_RESAMPLE)}")
        return cls(**d)

    @property
    def draft_size(self) -> int | None:
        """The shortest side a JPEG may decode at for this transform (load_image's min_size), or None: full size.
        A 4032x3024 photo decodes at 504x378 (1/8) for a 256/224 transform, ~5x faster with the resize
        (benchmarks/jpeg_draft.py); only crop-box transforms (the lite towers, fusion encoders, captioners) do, since
        CLIP checkpoints match their processors' full-size decode exactly."""
        return max(self.resize, self.crop) if self.crop_box else None

    def _resized(self, w: int, h: int) -> tuple[int, int, int, int]:
        """(resized w, resized h, crop left, crop top) for a w x h image. The long side is truncated as CLIP's
        processors (HF and torchvision) do, so CLIP checkpoints match exactly."""
        if not self.resize:  # the crop of the photo as it is; Pillow pads a smaller one with black where HF's does
            return w, h, (w - self.crop) // 2, (h - self.crop) // 2
        nw, nh = (self.resize, int(self.resize * h / w)) if w <= h else (int(self.resize * w / h), self.resize)
        nw, nh = max(self.crop, nw), max(self.crop, nh)
        return nw, nh, (nw - self.crop) // 2, (nh - self.crop) // 2

    def source_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The part of an image of ``size`` (w, h) that the centre crop keeps, in its own pixels (left, top, right,
        bottom): where a heat map over the model's input belongs on the original image."""
        w, h = size
        nw, nh, left, top = self._resized(w, h)
        sx, sy = w / nw, h / nh
        return left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy

    def pil_crop(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        check_image_size(w, h)
        keep = _MAX_RESIZED_ASPECT * min(w, h)
        if self.resize and not self.crop_box and max(w, h) > keep:  # the box path below only resizes the crop already
            x0, y0 = (w - min(w, keep)) // 2, (h - min(h, keep)) // 2
            img = img.crop((x0, y0, x0 + min(w, keep), y0 + min(h, keep)))
            w, h = img.size
        nw, nh, left, top = self._resized(w, h)
        if not self.crop_box or not self.resize:
            return img.resize((nw, nh), _RESAMPLE[self.resample]).crop((left, top, left + self.crop, top + self.crop))
        return self._box_resize(img, nw, nh)

    def _box_resize(self, img: Image.Image, nw: int, nh: int) -> Image.Image:
        """The crop that resizing img whole to nw x nh would keep, resampling only that part. Pillow resizes in two
        8-bit passes and, from Pillow 13, runs the vertical one first when the height shrinks by over twice as many
        pixels as the width, judged on the whole image, not the box. Bicubic overshoot is clipped between the passes,
        so the order moves pixels by up to ~25/255 on sharp detail: where the box call would pick another order than
        the full resize (tall images, upscaled or over 2:1), run the two passes here in the full resize's order."""
        (w, h), c, resample = img.size, self.crop, _RESAMPLE[self.resample]
        box = self.source_box((w, h))
        vertical_first = _vertical_first(w, h, nw, nh)
        if self.resample == "nearest" or vertical_first == _vertical_first(w, h, c, c):
            return img.resize((c, c), resample, box=box)
        x0, y0, x1, y1 = box
        if not vertical_first:  # horizontal pass over just the rows the vertical taps read, then the vertical pass
            reach = _SUPPORT[self.resample] * max(1.0, (y1 - y0) / c)
            top, bottom = max(0, math.floor(y0 - reach) - 1), min(h, math.ceil(y1 + reach) + 1)
            band = img.crop((0, top, w, bottom)).resize((c, bottom - top), resample, box=(x0, 0, x1, bottom - top))
            return band.resize((c, c), resample, box=(0, y0 - top, c, y1 - top))
        reach = _SUPPORT[self.resample] * max(1.0, (x1 - x0) / c)
        left, right = max(0, math.floor(x0 - reach) - 1), min(w, math.ceil(x1 + reach) + 1)
        band = img.crop((left, 0, right, h)).resize((right - left, c), resample, box=(0, y0, right - left, y1))
        return band.resize((c, c), resample, box=(x0 - left, 0, x1 - left, c))

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        """An image or images (as encode_image takes them) -> float32 [B, 3, crop, crop]."""
        # one path, PIL image or [H, W, C] array is one image, as encode_image reads it (it was iterated: a path's
        # characters read as files, an array's rows as 224 images), and a generator has no len()
        images = as_images(images)
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        # (x / 255 - mean) / std as one multiply-add per pixel, straight from the uint8 pixels
        scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
        offset = (-mean / std).astype(np.float32)[:, None, None]
        out = np.empty((len(images), 3, self.crop, self.crop), dtype=np.float32)
        for i, image in enumerate(images):
            img = load_image(image, self.draft_size)
            np.multiply(np.asarray(self.pil_crop(img)).transpose(2, 0, 1), scale, out=out[i])
            out[i] += offset
        return out
