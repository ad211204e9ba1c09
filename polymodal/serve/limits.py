"""Service settings and the checks every request passes: body size, image pixels, k, list lengths.

No FastAPI here: these are plain functions that raise ApiError (an HTTP status and a message), so they are easy to
test and reuse (e.g. by a future ONNX runtime server).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import asdict, dataclass

from PIL import Image, UnidentifiedImageError

from polymodal.data.images import check_image_size, open_image, to_rgb
from polymodal.data.tokenizer import check_unicode
from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError

# Formats the service decodes from request bytes. Restricting Pillow to these keeps exotic decoders away from them;
# TIFF (which the index also scans: polymodal.data.images.IMAGE_EXTENSIONS) is read from the index's own files only.
IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}
INDEXED_FORMATS = [*IMAGE_FORMATS, "TIFF"]  # thumbnails of indexed files


class ApiError(PolymodalError):
    """A user error with the HTTP status to answer it with. The message is sent as {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ServeSettings:
    max_body_bytes: int = 20 * 1024 * 1024  # whole request body
    max_image_pixels: int = 40_000_000  # width * height to decode (a JPEG's reduced size), checked before decoding
    # decoded pixels a request may hold at once where its images are kept whole (/v1/caption, /v1/vqa): ~1 GB of
    # RGB; a JPEG counts at the reduced size it decodes to, so 64 camera photos fit
    max_request_pixels: int = 200_000_000
    max_k: int = 1000  # search results per query
    request_timeout_s: float = 30.0  # whole request, body upload included (index adds: body and queueing only)
    batching: bool = True  # merge concurrent embedding requests into one forward pass
    # items per merged forward pass. 8, not 32: smaller batches keep decoding (request threads) and forward passes
    # (model thread) overlapping; measured 149 vs 117 image QPS at concurrency 32 (benchmarks/serve_load.py)
    max_batch: int = 8
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_images_per_request: int = 64
    max_texts_per_request: int = 256
    max_text_chars: int = 10_000
    max_labels: int = 1000
    max_templates: int = 16
    # labels x templates: prompts one /v1/classify may encode (uncached) on the one model thread; 4,000 short
    # prompts take seconds on 2 CPU cores, where 1,000 x 16 took longer than the timeout and held up every request
    max_prompts: int = 4000
    max_remove_ids: int = 10_000
    thumb_size: int = 256  # longest side of served thumbnails, pixels
    # Host names a server without an API key answers besides localhost, IP addresses and this machine's own names
    # ("*": any); see polymodal.serve.hosts
    allowed_hosts: tuple[str, ...] = ()
    # serve thumbnails of indexed files that are links to files outside the indexed folders (`serve
    # --follow-symlinks`: a dataset made of links); by default such a link in a folder someone sent could show any
    # photo of this machine to every client, see Service.check_servable
    follow_symlinks: bool = False
    # answers name files, not where they lie (`serve --hide-paths`: a server shared widely): a hit's path is its file
    # name, and the index's folder (or Qdrant's address) is left out of /v1/info and every error, see Service.hide
    hide_paths: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.allowed_hosts, str) or not all(isinstance(h, str) and h for h in self.allowed_hosts):
            raise PolymodalError(f"serve setting allowed_hosts must be a tuple of host names, got {self.allowed_hosts!r}")
        for key, value in asdict(self).items():
            if isinstance(value, bool) or key == "allowed_hosts":
                continue
            finite = isinstance(value, (int, float)) and 0 <= value < math.inf  # (nan fails too)
            if not finite or (value == 0 and key != "max_wait_ms"):
                raise PolymodalError(f"serve setting {key} must be a positive number, got {value!r}")

    def public(self) -> dict:
        """What clients may know (shown by GET /v1/info): the limits, not which names or files the server serves."""
        return {k: v for k, v in asdict(self).items() if k not in ("allowed_hosts", "follow_symlinks",
                                                                       "hide_paths")}


def open_image_checked(data: bytes, max_pixels: int, name: str = "upload", min_size: int | None = None) -> Image.Image:
    """Bytes -> decoded RGB PIL image, refusing anything too big *before* decoding it (``min_size``: a JPEG may
    decode at reduced scale, as load_image does).

    Image.open only parses the header, so a 20000x20000 PNG of a few KB (a decompression bomb) is refused from
    its declared size without allocating its pixels.
    """
    if not data:
        raise ApiError(400, f"{name} is empty; send the bytes of a JPEG, PNG, WebP, BMP or GIF image")
    try:
        with warnings.catch_warnings():  # Pillow's DecompressionBombWarning: the size is judged below, as a 413
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = open_image(io.BytesIO(data), min_size, list(IMAGE_FORMATS))  # a 200 MP JPEG: drafted to 1/8
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ApiError(
            400, f"{name} is not a readable image ({exc.__class__.__name__}); send a JPEG, PNG, WebP, BMP or GIF file"
        ) from None
    except Image.DecompressionBombError as exc:  # Pillow's own header check, for sizes far past ours
        found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (900000000 pixels) exceeds limit of ..."
        size = f"declares {int(found.group(1)):,} pixels" if found else "declares too many pixels"
        raise ApiError(413, f"{name} {size}; the limit is {max_pixels:,} pixels ({max_pixels / 1e6:g} MP); send a "
                            "smaller image") from None
    w, h = img.size
    try:
        check_image_size(w, h, name)  # a 1x40,000,000 strip passes the pixel limit but is no picture
        if min_size:  # a JPEG then decodes at 1/2 to 1/8 scale: a 48 MP phone photo holds 0.75-3 MP in memory
            img.draft(None, (min_size, min_size))
    except PolymodalError as exc:
        raise ApiError(400, str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError(400, f"{name} is a damaged image ({exc.__class__.__name__}); send a complete file") from None
    if img.width * img.height > max_pixels:  # what decoding will hold, checked before it happens
        raise ApiError(
            413,
            f"{name} is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} pixels ({max_pixels / 1e6:g} MP) "
            f"decoded{' (a JPEG counts at the reduced size it decodes to)' if min_size else ''}; send a smaller image",
        )
    try:
        img.load()
        return to_rgb(img)  # the same pixels load_image gives for this file (EXIF rotation, 16-bit, alpha)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise ApiError(400, f"{name} is a damaged or truncated image ({exc.__class__.__name__}); send a complete file") from None


def image_suffix(data: bytes) -> str:
    """The file extension for already-validated image bytes (server-chosen, never the client's file name)."""
    try:
        with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as img:
            return {**IMAGE_FORMATS, "MPO": ".jpg"}[img.format]  # a phone's multi-picture JPEG opens as MPO
    except Image.DecompressionBombError:  # validated: only a JPEG decoding at reduced scale gets past that limit
        return ".jpg"


def check_k(k, max_k: int, field: str = "k") -> int:
    """A count field (k, top_k, beam): a whole number from 1 to max_k, sent as a number or as form text."""
    if isinstance(k, str):
        try:
            k = int(k.strip())
        except ValueError:
            raise ApiError(400, f"{field} must be a whole number, got {k[:40]!r}") from None
    if isinstance(k, bool) or not isinstance(k, int):
        raise ApiError(400, f"{field} must be a whole number, got {type(k).__name__}")
    if not 1 <= k <= max_k:
        raise ApiError(400, f"{field} must be between 1 and {max_k}, got {k}")
    return k


def check_texts(texts, limit: int, max_chars: int, field: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, list):
        raise ApiError(400, f'"{field}" must be a list of strings, e.g. {{"{field}": ["a dog", "a cat"]}}')
    if not texts:
        raise ApiError(400, f'"{field}" is empty; pass at least one string')
    if len(texts) > limit:
        raise ApiError(413, f'"{field}" has {len(texts)} items; the limit is {limit} per request')
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ApiError(400, f'"{field}"[{i}] must be a string, got {type(t).__name__}')
        if len(t) > max_chars:
            raise ApiError(413, f'"{field}"[{i}] has {len(t)} characters; the limit is {max_chars}')
        if is_blank(t):  # as search and classify refuse a blank query or label: it embeds as nothing in particular
            raise ApiError(400, f'"{field}"[{i}] is blank; every text needs some words')
    return check_unicode_field(texts, field)


def check_unicode_field(texts: list[str], field: str) -> list[str]:
    """A lone surrogate ("\\ud800" in JSON) is refused here, as a 400 for this request alone, not in a batch that
    other requests share."""
    try:
        check_unicode(texts)
    except PolymodalError as exc:
        raise ApiError(400, f'"{field}": {exc}') from None
    return texts


def check_templates(templates, limit: int) -> list[str] | None:
    """Prompt templates as the Python API and the CLI take them: each with a '{}' where the label goes (every '{}' is
    filled by plain replacement, so other braces are text and str.format never runs)."""
    if templates is None:
        return None
    if isinstance(templates, str):
        templates = [templates]
    if not isinstance(templates, list) or not templates or len(templates) > limit:
        raise ApiError(400, f'"templates" must be a list of 1 to {limit} strings like "a photo of a {{}}."')
    for t in templates:
        if not isinstance(t, str) or "{}" not in t or len(t) > 500:
            raise ApiError(400, f"template {str(t)[:80]!r} must be text of at most 500 characters with a '{{}}' where "
                                "the label goes, e.g. \"a photo of a {}.\"")
    return templates
