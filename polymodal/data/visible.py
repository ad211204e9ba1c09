"""Whether a text shows anything: str.strip() keeps zero-width and other format characters (U+200B, U+2060,
U+FEFF), in which a tokenizer finds no word, so a query, question or label of them alone passed every blank check
and got confident answers to nothing."""

import unicodedata

_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}  # controls, format characters and spaces


def is_blank(text: str) -> bool:
    """True when no character of ``text`` shows (empty, whitespace, zero-width or control characters only)."""
    return all(unicodedata.category(c) in _INVISIBLE for c in text)
