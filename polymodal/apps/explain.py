"""Heat maps over images: a coarse ``[h, w]`` relevance grid (`FusionEncoder.explain`'s 7x7 for VQA, or
`occlusion_heat` for why a retrieval match matched) overlaid on the image it explains and saved as a picture."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from polymodal.apps.heat_scale import heat_colors, with_legend
from polymodal.cache import atomic_write_bytes
from polymodal.data.images import load_image
from polymodal.errors import PolymodalError


def occlusion_heat(model, image: Any, query: np.ndarray, grid: int = 7, window: int = 2, batch: int = 32) -> np.ndarray:
    """Why an embedding model matched ``image`` to ``query`` (a unit vector from encode_text or encode_image), for any
    model with ``transform`` and ``embed_pixels`` (lite, default, CLIP, their ONNX exports): `occlusion_map` of the
    cosine with the query. ``[grid, grid]`` float32, >= 0, largest where it matters."""
    if isinstance(query, str):  # else numpy's "could not convert string to float"
        raise PolymodalError("occlusion_heat takes the query's vector, not its text: pass "
                             "model.encode_text([text])[0] (or model.encode_image([image])[0])")
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    dim = getattr(model, "dim", None)
    if dim is not None and q.size != dim:  # several queries, or another model's vector: else a numpy matmul error
        raise PolymodalError(f"occlusion_heat takes one query vector of {dim} values (this model's), got "
                             f"{np.shape(query)}; pass one row, e.g. model.encode_text([text])[0]")
    return occlusion_map(model.transform([image]), lambda pixels: model.embed_pixels(pixels) @ q, grid, window, batch)


def occlusion_map(pixels: np.ndarray, score: Callable[[np.ndarray], np.ndarray], grid: int = 7, window: int = 2,
                  batch: int = 32) -> np.ndarray:
    """Blank a ``window`` x ``window`` block of a ``grid`` x ``grid`` partition of ``pixels`` ([1, C, H, W], the crop
    the model sees; 0 after normalisation: the dataset's mean colour), at every position, and measure how much
    ``score`` ([N, C, H, W] -> [N]) drops; each cell gets the mean drop of the blocks covering it (blocks, not single
    cells: one cell is rarely the only evidence). ``[grid, grid]`` float32, >= 0."""
    edges = np.linspace(0, pixels.shape[-1], grid + 1).round().astype(int)
    window = max(1, min(window, grid))
    starts = [(r, c) for r in range(grid - window + 1) for c in range(grid - window + 1)]
    occluded = np.repeat(pixels, len(starts), axis=0)
    for k, (r, c) in enumerate(starts):
        occluded[k, :, edges[r] : edges[r + window], edges[c] : edges[c + window]] = 0.0
    base = float(np.asarray(score(pixels)).reshape(-1)[0])
    scores = np.concatenate([np.asarray(score(occluded[i : i + batch])).reshape(-1)
                             for i in range(0, len(occluded), batch)])
    heat, covered = np.zeros((grid, grid), np.float32), np.zeros((grid, grid), np.float32)
    for (r, c), drop in zip(starts, np.clip(base - scores, 0, None)):
        heat[r : r + window, c : c + window] += drop
        covered[r : r + window, c : c + window] += 1
    return heat / covered


def overlay_heatmap(image: Any, heat: np.ndarray, alpha: float = 0.5, box: tuple | None = None) -> Image.Image:
    """The image (its original size) blended with the heat grid, upsampled smoothly over ``box`` (left, top, right,
    bottom in the image's pixels: the centre crop the model saw, see ImageTransform.source_box; default the whole
    image). Outside the box the image is left as it is."""
    img = load_image(image)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2 or not heat.size or not np.isfinite(heat).all():
        raise PolymodalError(f"a heat map must be a finite 2-D array, got shape {heat.shape}")
    lo, hi = float(heat.min()), float(heat.max())
    heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    left, top, right, bottom = (round(v) for v in (box or (0, 0, *img.size)))
    region = img.crop((left, top, right, bottom))
    grid = Image.fromarray((heat * 255).astype(np.uint8), mode="L").resize(region.size, Image.BICUBIC)
    colors = Image.fromarray(heat_colors(np.asarray(grid, dtype=np.float32) / 255.0))
    out = img.copy()
    out.paste(Image.blend(region, colors, alpha), (left, top))
    return out


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# the longest side each format's encoder takes: a panorama's map past it is scaled down to fit (a 20000-pixel-wide
# one as .webp was a traceback, a 70000-pixel one as .jpg "broken data stream ... check the free space", after all
# the model's passes)
_MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}


def heatmap_format(out: str | Path) -> str:
    """The image format a heat map saved as ``out`` gets (from its suffix), or a PolymodalError saying which to use."""
    fmt = _FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise PolymodalError(f"cannot write a heat map as {Path(out).name!r}; end the file name in {', '.join(_FORMATS)}")
    return fmt


def check_heatmap_path(out: str | Path, image: Any = None) -> str:
    """heatmap_format(out), after making sure the file can be written: a folder of that name, a parent that is a
    file, a folder that cannot be written in, or the file of ``image`` itself (the photo explained, which the map
    would replace) is one PolymodalError here, before the model loads and the occlusion passes run, rather than an
    OSError naming a hidden temporary file after them. Missing folders are fine (saving makes them)."""
    import os

    from polymodal.cache import temp_beside

    fmt = heatmap_format(out)
    path = Path(out).expanduser()
    if path.is_dir():
        raise PolymodalError(f"cannot write a heat map to {out}: it is a folder; name a file, e.g. {path / 'heat.png'}")
    if isinstance(image, (str, os.PathLike)) and path.is_file():
        try:
            same = os.path.samefile(path, Path(image).expanduser())
        except OSError:
            same = False
        if same:  # `vqa photo.png "q" --explain photo.png` replaced the photo with its heat map
            raise PolymodalError(f"cannot write a heat map to {out}: it is the image it explains, which it would "
                                 f"replace; name another file, e.g. {path.with_name(path.stem + '-heat' + path.suffix)}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:  # the nearest folder that exists: saving makes the rest
        parent = parent.parent
    if not parent.is_dir():
        raise PolymodalError(f"cannot write a heat map to {out}: {parent} is a file, not a folder")
    try:
        if parent == path.parent:  # try it: permissions, a read-only mount, a full disk's inodes
            fd, tmp = temp_beside(path)
            os.close(fd)
            os.unlink(tmp)
        elif not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(parent))
    except OSError as exc:
        raise PolymodalError(f"cannot write a heat map to {out} ({exc.strerror or exc}); pass a path in a folder "
                             "you can write") from None
    return fmt


# A heat map is drawn over the photo decoded with both sides at least this long: a JPEG past 4096 pixels on its
# short side (48-200 MP phone photos) is decoded at 1/2-1/8 scale, which a 7x7 grid loses nothing to, and a 200 MP
# one fits Pillow's pixel limit; other photos are drawn at their own size,
OVERLAY_MIN_SIDE = 2048
# except small ones, enlarged a whole number of times (each pixel a square block) until their short side is at least
# this long: easy-VQA's 64x64 photos gave a 64x64 map (9 pixels a cell), too small to read; never past OVERLAY_MIN_SIDE
# on the long side (a 3000x2 strip became a 336000x224 PNG: 34 s and 7 GB)
VIEW_MIN_SIDE = 224


class _Required:
    """The default of an argument that must be passed, named for help() (a bare object() read there as
    ``transform=<object object at 0x7f...>``)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<required: {self.what}>"


# save_heatmap's transform when none is passed: refused, since a bare grid cannot say which crop it covers
_NO_TRANSFORM = _Required("model.transform, or None")


def save_heatmap(image: Any, heat: np.ndarray, out: str | Path, alpha: float = 0.5, transform=_NO_TRANSFORM, *,
                 caption: str | None = None, method: str | None = None, legend: bool = True) -> Path:
    """Write ``image`` with ``heat`` overlaid, atomically, at the image's size (a JPEG file or bytes whose short side
    passes 4096 pixels at 1/2 to 1/8 of it, see OVERLAY_MIN_SIDE; a panorama past Pillow's pixel limit at the largest
    of those that fits; one smaller than VIEW_MIN_SIDE enlarged a whole number of times; one longer than its
    format allows, .jpg's 65,500 or .webp's 16,383 pixels, shrunk to fit); the file's suffix picks the format (.png,
    .jpg, .webp). ``transform`` is required: the model's (``model.transform``) puts the grid over the centre crop
    the model saw (a map from ``explain`` or `occlusion_heat`); None spreads it over the whole image. Below the
    picture comes a strip (see heat_scale.with_legend) with ``caption`` (what the map explains: the question and
    answer, the query and the match), ``method`` (how the map was made: a VQA model's ``heat_map_method``,
    "occlusion" for `occlusion_heat`) and the colour scale; ``legend=False`` writes the picture alone, at the
    image's size."""
    import io

    out = Path(out).expanduser()  # as check_heatmap_path checks it: "~/heat.png" made a folder named "~" here
    fmt = check_heatmap_path(out, image)
    if transform is _NO_TRANSFORM:  # the whole image was the default: a wide photo's map landed off the crop it maps
        raise PolymodalError("save_heatmap needs transform=: pass model.transform (the model that made the map) to "
                             "draw it over the crop the model saw, or transform=None to spread it over the whole image")
    for min_side in (OVERLAY_MIN_SIDE, OVERLAY_MIN_SIDE // 2, OVERLAY_MIN_SIDE // 4, 1):
        try:  # a panorama past Pillow's limit with a short side under 4096: the largest draft that fits it
            img = load_image(image, min_size=min_side)
            break
        except PolymodalError:
            if min_side == 1:
                raise  # an unreadable image (or one past the limit at 1/8)
    times = min(-(-VIEW_MIN_SIDE // min(img.size)), max(1, OVERLAY_MIN_SIDE // max(img.size)))
    if times > 1:
        img = img.resize((img.width * times, img.height * times), Image.NEAREST)
    box = transform.source_box(img.size) if transform is not None else None
    picture = overlay_heatmap(img, heat, alpha, box)
    if legend:
        picture = with_legend(picture, caption, method)
    limit = _MAX_SIDE.get(fmt)
    if limit and max(picture.size) > limit:
        picture.thumbnail((limit, limit), Image.BILINEAR)  # keeps the aspect ratio
    buf = io.BytesIO()
    picture.save(buf, format=fmt)
    atomic_write_bytes(out, buf.getvalue())
    return out
