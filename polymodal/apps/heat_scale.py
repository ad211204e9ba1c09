"""The colours a heat map is drawn in, and the strip under a saved one that names them, what the map explains (the
question and answer, or the query and the match) and how it was made (attention, gradient or occlusion: a reader
weighs them differently), so a map looked at days later still says what red means."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# the strip is at least this wide (its two labels take about 180 pixels at the smallest type): a narrower map (a
# 20x500 photo's is drawn 80x2000) sits centred above it; easy-VQA's 256x256 maps keep their width
MIN_WIDTH = 224
MAX_LINES = 4  # of the caption once wrapped to the strip's width; a longer one is cut, ending in "..."
# fonts with more than ASCII (a question with "é", a photo named in Greek): Pillow's own has only ASCII and a few
# signs, so it is the last resort
_FONTS = ("DejaVuSans.ttf", "Arial.ttf", "arial.ttf")
_INK, _PAPER = (20, 20, 20), (255, 255, 255)


def heat_colors(heat: np.ndarray) -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> ``[H, W, 3]`` uint8 on a blue -> green -> yellow -> red ramp."""
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 200, 80], [255, 230, 0], [230, 20, 0]], dtype=np.float32)
    pos = np.clip(heat, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def with_legend(picture: Image.Image, caption: str | None = None, method: str | None = None) -> Image.Image:
    """``picture`` (a heat map drawn over a photo) above a white strip: ``caption`` (its lines wrapped to the width,
    at most MAX_LINES), then ``method`` (how the map was made, e.g. "occlusion"; a line of its own, so a long caption
    cut short never cuts it), then the colour scale, labelled at its ends. Text scales with the width, so it stays
    legible when a large photo's map is shown fitted to a screen."""
    width = max(picture.width, MIN_WIDTH)
    size = max(12, min(64, round(width / 36)))
    font = _font(size)
    pad, line = size // 2, round(size * 1.3)
    lines = wrapped(_drawable(caption or "", font), font, width - 2 * pad)
    if method:
        lines += wrapped(_drawable(f"Method: {method}", font), font, width - 2 * pad)
    bar = heat_colors(np.linspace(0, 1, width - 2 * pad, dtype=np.float32)[None].repeat(size, 0))
    top = picture.height + pad
    canvas = Image.new("RGB", (width, top + len(lines) * line + (pad if lines else 0) + size + line + pad), _PAPER)
    canvas.paste(picture.convert("RGB"), ((width - picture.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((pad, top + i * line), text, fill=_INK, font=font)
    top += len(lines) * line + (pad if lines else 0)
    canvas.paste(Image.fromarray(bar), (pad, top))
    draw.text((pad, top + size + size // 4), "least relevant", fill=_INK, font=font)
    draw.text((width - pad - font.getlength("most relevant"), top + size + size // 4), "most relevant", fill=_INK,
              font=font)
    return canvas


def wrapped(text: str, font, width: float) -> list[str]:
    """``text``'s lines broken at spaces to fit ``width`` pixels (a word longer than that, say a path, anywhere), at
    most MAX_LINES of them, the last ending in "..." when some were left out."""
    lines: list[str] = []
    for para in text.replace("\t", " ").splitlines():
        current = ""
        for word in para.split(" "):
            trial = f"{current} {word}" if current else word
            if font.getlength(trial) <= width:
                current = trial
                continue
            if current:
                lines.append(current)
            while font.getlength(word) > width:
                cut = _fitting(word, font, width)
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    if len(lines) > MAX_LINES:
        last = lines[MAX_LINES - 1]
        lines = lines[: MAX_LINES - 1] + [last[: _fitting(last + "...", font, width, keep=3)] + "..."]
    return lines


def _fitting(text: str, font, width: float, keep: int = 0) -> int:
    """How many of ``text``'s first characters fit ``width`` pixels with its last ``keep`` characters after them
    (at least one: a line never comes out empty)."""
    head, tail = text[: len(text) - keep], text[len(text) - keep :]
    lo, hi = 1, len(head)
    while lo < hi:  # the largest n with head[:n] + tail fitting
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if font.getlength(head[:mid] + tail) <= width else (lo, mid - 1)
    return lo


def _font(size: int):
    for name in _FONTS:
        try:
            return ImageFont.truetype(name, size)
        except (OSError, ImportError):  # not on this machine; ImportError: a Pillow built without FreeType
            continue
    try:
        return ImageFont.load_default(size)  # Aileron, ASCII only
    except (TypeError, ImportError):  # Pillow 10.0 (no sizes), or no FreeType: its small bitmap font
        return ImageFont.load_default()


def _drawable(text: str, font) -> str:
    """``text`` as ``font`` can draw it: Pillow's bitmap font encodes text as Latin-1 and raised UnicodeEncodeError
    for any other character (a Greek question, a photo named in Chinese); those are drawn as "?" instead."""
    if isinstance(font, ImageFont.FreeTypeFont):  # a missing glyph is a box, never an error
        return text
    return text.encode("latin-1", "replace").decode("latin-1")
