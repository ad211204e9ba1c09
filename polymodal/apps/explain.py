"""Heat maps over images: overlay a coarse ``[h, w]`` relevance grid (e.g. `FusionEncoder.explain`'s 7x7) on the
image it explains and save a PNG. Pillow only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from polymodal.cache import atomic_write_bytes
from polymodal.data.images import load_image
from polymodal.errors import PolymodalError


def heat_colors(heat: np.ndarray) -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> ``[H, W, 3]`` uint8 on a blue -> green -> yellow -> red ramp."""
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 200, 80], [255, 230, 0], [230, 20, 0]], dtype=np.float32)
    pos = np.clip(heat, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def overlay_heatmap(image: Any, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image (its original size) blended with the heat grid, upsampled smoothly to the image size."""
    img = load_image(image)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2 or not heat.size or not np.isfinite(heat).all():
        raise PolymodalError(f"a heat map must be a finite 2-D array, got shape {heat.shape}")
    lo, hi = float(heat.min()), float(heat.max())
    heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    grid = Image.fromarray((heat * 255).astype(np.uint8), mode="L").resize(img.size, Image.BICUBIC)
    colors = Image.fromarray(heat_colors(np.asarray(grid, dtype=np.float32) / 255.0))
    return Image.blend(img, colors, alpha)


def save_heatmap(image: Any, heat: np.ndarray, out_png: str | Path, alpha: float = 0.5) -> Path:
    """Write ``image`` with ``heat`` overlaid as a PNG of the image's size (atomically); returns the path."""
    import io

    out = Path(out_png)
    buf = io.BytesIO()
    overlay_heatmap(image, heat, alpha).save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    return out
