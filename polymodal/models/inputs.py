"""Checks on what the Python API is given (torch-free, imports nothing of polymodal but errors, so any module can
use them): a user mistake becomes one PolymodalError, not a silent misreading or a raw TypeError."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from numbers import Integral
from typing import Any

from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)


def as_texts(value: Any, what: str = "texts") -> list[str]:
    """A string or an iterable of strings -> a list of strings. A single string is one text (never its characters);
    anything not a string is refused, so None or a nested list is not silently embedded as its repr."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise PolymodalError(f"{what} must be a string or a list of strings, got {type(value).__name__}")
    items = list(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise PolymodalError(f"{what}[{i}] is {item!r:.40} ({type(item).__name__}), not a string; "
                                 f"pass {what} as strings")
    return items


def as_images(value: Any) -> list:
    """One image (a path, bytes, a file object, a PIL image, an array of up to 3 dimensions) -> [it]; a batch (a
    list, tuple, array of paths, [N, H, W, C] array, generator, pandas Series ...) -> a list of its items."""
    if isinstance(value, (str, bytes, bytearray, os.PathLike)) or hasattr(value, "getpixel"):  # getpixel: PIL
        return [value]
    if isinstance(value, memoryview):  # a buffer of file bytes, not a sequence of ints
        return [bytes(value)]
    if hasattr(value, "read"):  # a file object (open(p, "rb"), BytesIO, an upload): one image, not its lines
        return [value]
    if isinstance(value, Mapping):  # iterating would read its keys as paths
        raise PolymodalError(f"images must be a path, PIL image, array or a list of them, got {type(value).__name__}; "
                             "pass list(d.values()) for a dict of images")
    value = tensor_to_array(value)
    ndim = getattr(value, "ndim", None)
    if ndim is not None and getattr(value, "dtype", None) is not None and value.dtype.kind not in "biufOUS":
        raise PolymodalError(f"an image array of dtype {value.dtype} holds no pixels; pass uint8 (0-255) or float "
                             "(0-1 or 0-255) pixels")
    if ndim is not None and getattr(value, "dtype", None) is not None and value.dtype.kind in "biuf" and ndim <= 3:
        return [value]  # pixels: H x W, H x W x C or C x H x W
    if ndim == 0:  # np.array("x.jpg"): one path (iterating a 0-d array is a bare TypeError)
        return [value.item()]
    if isinstance(value, Iterable):
        return list(value)
    return [value]


def tensor_to_array(value: Any) -> Any:
    """A torch tensor -> its numpy array (pixels are read like any array); anything else unchanged. Duck-typed so
    this module stays torch-free."""
    if hasattr(value, "detach") and hasattr(value, "numpy") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        return (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()  # numpy has no bf16
    return value


def as_pixels(value: Any) -> Any:
    """embed_pixels()'s input: preprocessed [B, 3, H, W] float pixels (a numpy array or torch tensor) -> a
    C-contiguous float32 numpy array. Raw pixels (uint8 or other integers), one image without its batch axis, or
    channels last are one error: the PyTorch towers failed on them with a RuntimeError from deep inside, and the
    ONNX graphs took integer pixels as they were, embedding 0-255 values as normalised ones, silently."""
    import numpy as np

    arr = np.asarray(tensor_to_array(value))
    if arr.dtype.kind != "f":
        raise PolymodalError(f"embed_pixels takes the model's preprocessed pixels (model.transform(images): float32 "
                             f"[B, 3, H, W]), got dtype {arr.dtype}; pass raw images (paths, PIL images, uint8 "
                             "arrays) to encode_image")
    if arr.ndim != 4 or arr.shape[1] != 3:
        one = "; for one image add the batch axis (pixels[None])" if arr.ndim == 3 and arr.shape[0] == 3 else ""
        raise PolymodalError(f"embed_pixels takes preprocessed pixels [B, 3, H, W] (model.transform(images)), got "
                             f"shape {list(arr.shape)}{one}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def vqa_rows(images: Any, questions: Any) -> tuple[list, list[str]]:
    """predict()'s arguments as rows: a single image (path, PIL image, array) or question string is one row, not a
    sequence of characters; the counts must match."""
    images, questions = as_images(images), as_texts(questions, "questions")
    if len(images) != len(questions):
        raise PolymodalError(f"got {len(images)} images but {len(questions)} questions; pass one image per question")
    blank = next((i for i, q in enumerate(questions) if is_blank(q)), None)
    if blank is not None:  # answer() refuses one too: a blank question would get a confident answer to nothing
        raise PolymodalError(f"question {blank} is empty; ask something about its image")
    from polymodal.data.tokenizer import check_unicode

    for i, question in enumerate(questions):  # here, by its row: the tokenizer sees chunks of distinct ones as "texts"
        check_unicode([question], f"question {i}")
    return images, questions


def one_question(value: Any, ask: str = "ask something about the image") -> str:
    """answer()'s question: one non-blank string. A list or None is a mistake, not text to answer."""
    if not isinstance(value, str):
        raise PolymodalError(f"the question must be one string, got {type(value).__name__}; "
                             "predict() answers many (image, question) rows")
    if is_blank(value):
        raise PolymodalError(f"the question is empty; {ask}")
    from polymodal.data.tokenizer import check_unicode

    check_unicode([value], "the question")  # explain() of a vocabulary answer called it "text 1"
    return value


def as_paths(value: Any, what: str = "data") -> list:
    """A recipe's data files: one path (str or Path) or a list of them -> a list. Rows in memory (dicts) are one
    error saying how to pass them: a training run records and resumes from its files."""
    if isinstance(value, (str, os.PathLike)):
        return [value]
    rows = isinstance(value, dict) or (isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value))
    if rows:
        raise PolymodalError(f"{what} takes data files, not rows: write the rows to a JSONL file first, e.g. "
                             "Path(\"rows.jsonl\").write_text(\"\".join(json.dumps(r) + \"\\n\" for r in rows)) "
                             "(image paths relative to that file), and pass its path")
    return value


def as_parts(value: Any) -> Any:
    """A recipe's ``freeze``: "projections,fusion" (as a flag gives it) or a list of part names -> a list."""
    parts = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    parts = list(parts) if isinstance(parts, Iterable) and not isinstance(parts, (bytes, Mapping)) else None
    if parts is None or not all(isinstance(p, str) for p in parts):
        raise PolymodalError(f'freeze takes part names ("projections,fusion" or a list of them), got {value!r}')
    return parts


def check_count(value: Any, what: str, none_means: str = "") -> int | None:
    """A whole number >= 1 (batch_size, top_k, k) -> int. None passes only when none_means says what it means."""
    if value is None and none_means:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        also = f" (or None for {none_means})" if none_means else ""
        raise PolymodalError(f"{what} must be a whole number of at least 1{also}, got {value!r}")
    return int(value)


def check_fraction(value: Any, what: str) -> None:
    """A number in [0, 1) (a dropout probability); one error naming the setting otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise PolymodalError(f"{what} must be a number in [0, 1), got {value!r}")


def as_settings(value: Any, kind: type, what: str, defaults: dict | None = None):
    """A nested settings dataclass (a recipe's arch or train) given as itself or, natural from Python, as a dict
    of its settings (over `defaults`, as a --config file's would be) -> an instance of kind."""
    if isinstance(value, Mapping):
        return kind.from_dict({**(defaults or {}), **value})
    if not isinstance(value, kind):
        raise PolymodalError(f"{what} must be a {kind.__name__} or a dict of its settings, got {type(value).__name__}")
    return value


class Unreadable(PolymodalError):
    """An item `each_or_error` could not use, raised at once inside `stop_at_first_unreadable()`."""


_STOP_AT_FIRST = ContextVar("polymodal_stop_at_first_unreadable", default=False)


@contextmanager
def stop_at_first_unreadable():
    """Inside it, `each_or_error` raises `Unreadable` at the first item that fails instead of going on: for `eval
    --strict`, which refuses figures on part of the data, so the rest of the pass would be wasted."""
    token = _STOP_AT_FIRST.set(True)
    try:
        yield
    finally:
        _STOP_AT_FIRST.reset(token)


def stopping_at_first_unreadable() -> bool:
    """Inside `stop_at_first_unreadable()`: readers that leave unreadable items out raise `Unreadable` instead."""
    return _STOP_AT_FIRST.get()


def each_or_error(fn, items: list, batch_size: int = 32, bar=None) -> list:
    """fn(batch) -> one result per item, run a batch at a time; a batch that raises PolymodalError (an unreadable
    image in it) is retried item by item, and an item that still fails gets its error message (a str) instead
    (or ends the pass, inside `stop_at_first_unreadable()`). ``bar``, a progress bar, moves by each batch done."""
    out: list = []
    for start in range(0, len(items), batch_size):
        chunk = list(items[start : start + batch_size])
        out += _batch_or_each(fn, chunk)
        if bar is not None:
            bar.update(len(chunk))
    return out


def _batch_or_each(fn, chunk: list) -> list:
    try:
        return list(fn(chunk))
    except PolymodalError:
        pass
    out: list = []
    for item in chunk:
        try:
            out += list(fn([item]))
        except PolymodalError as exc:
            if stopping_at_first_unreadable():
                raise Unreadable(str(exc)) from None
            out.append(str(exc))
    return out


def readable_results(results: list, what: str = "image", source: str = "") -> list[int]:
    """The positions of each_or_error's successes. Failures get one warning (how many, the first reason); none
    succeeding is an error, e.g. "none of the 3 images in pairs.jsonl could be read (first: ...)". ``what`` is
    the singular noun ("image", "validation photo"); ``source`` names where they came from."""
    rows = [i for i, r in enumerate(results) if not isinstance(r, str)]
    bad = [r for r in results if isinstance(r, str)]
    where = f" in {source}" if source else ""
    if not results:
        raise PolymodalError(f"no {what}s{where} to read; pass at least one image")
    if not rows:
        raise PolymodalError(f"none of the {plural(len(results), what)}{where} could be read (first: {bad[0]}); "
                             "check the image files")
    if bad:
        log.warning("%sleft out %s (first: %s)", f"{source}: " if source else "",
                    plural(len(bad), f"unreadable {what}"), bad[0])
    return rows


def none_could_be(done: str, reasons: list[str]) -> str:
    """The one error of a command over images when none could be `done` ("read", "classified"): an image's own
    reason when it was the only one, else how many and the first reason."""
    if len(reasons) == 1:
        return reasons[0]
    return f"none of the {len(reasons)} images could be {done} (first: {reasons[0]})"


def unreadable_files(paths: list) -> dict:
    """{path: why} of the image files whose header check_image_file refuses, checked before a model loads: every
    one of them bad is one error then (none_could_be), not seconds of loading a model to say so."""
    from polymodal.data.images import check_image_file

    checked = each_or_error(lambda chunk: [check_image_file(p) for p in chunk], paths)
    if all(isinstance(r, str) for r in checked):
        raise PolymodalError(none_could_be("read", checked))
    return {p: r for p, r in zip(paths, checked) if isinstance(r, str)}


def plural(n: int, noun: str) -> str:
    """"1 image", "2 images"."""
    return f"{n:,} {noun}{'s' * (n != 1)}"
