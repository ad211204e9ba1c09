"""A small gallery of real photos that install with pip (scikit-image, scikit-learn): for the demo and tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from polymodal.cache import atomic_write_bytes
from polymodal.errors import PolymodalError

# file name -> (loader, what it shows)
SKIMAGE_PHOTOS = {
    "astronaut": ("astronaut", "an astronaut in a space suit"),
    "cameraman": ("camera", "a man with a camera on a tripod"),
    "cat": ("chelsea", "a tabby cat"),
    "coffee": ("coffee", "a cup of coffee"),
    "coins": ("coins", "old coins"),
    "galaxies": ("hubble_deep_field", "galaxies in deep space"),
    "moon": ("moon", "the surface of the moon"),
    "rocket": ("rocket", "a rocket on the launch pad"),
    "motorcycle": ("stereo_motorcycle", "a motorcycle"),
    "clock": ("clock", "a wall clock"),
    "retina": ("retina", "a retina photograph"),
    "page": ("page", "a page of printed text"),
    "bricks": ("brick", "a brick wall"),
}
SKLEARN_PHOTOS = {"temple": ("china.jpg", "a Chinese temple"), "flower": ("flower.jpg", "a flower")}


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    arr = getattr(skimage.data, name)()
    return arr[0] if isinstance(arr, tuple) else arr


def _sklearn(filename: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return load_sample_image(filename)


def sample_photos(needed_by: str = "the sample gallery", extra: str = "demo",
                  instead: str = "") -> dict[str, tuple[np.ndarray, str]]:
    """name -> (HxWx3 uint8 array, description). Needs scikit-image (the demo and onnx extras); the error names
    ``needed_by``, the ``extra`` that brings it there and, where the caller has one, what to do ``instead``."""
    try:
        photos = {n: (_skimage(src), d) for n, (src, d) in SKIMAGE_PHOTOS.items()}
    except ImportError as exc:
        raise PolymodalError(f"{needed_by} needs scikit-image; pip install 'polymodal[{extra}]'{instead}") from exc
    try:
        photos.update({n: (_sklearn(src), d) for n, (src, d) in SKLEARN_PHOTOS.items()})
    except ImportError:
        pass  # scikit-learn is optional: the gallery is still useful without its two photos
    return photos


def write_sample_gallery(folder: str | Path) -> list[Path]:
    """Save the sample photos as JPEG files under folder; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (arr, _) in sample_photos().items():
        path = folder / f"{name}.jpg"
        if not path.exists():  # whole or not at all: half a photo from a killed run would be kept by every re-run
            buf = io.BytesIO()
            Image.fromarray(arr).convert("RGB").save(buf, "JPEG", quality=92)
            atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
