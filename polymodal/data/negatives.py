"""Hard-negative captions made from the caption itself (NegCLIP, Yuksekgonul et al. 2023): the same words with two
content words swapped ("a dog chases a cat" -> "a cat chases a dog"). A bag-of-words model cannot tell them from
the caption, so training against them pushes the model to read word order and attachment.

No part-of-speech tagger (none installs offline with its model): a content word is an alphabetic word that is not
on a short list of function words. Trailing punctuation stays where it was.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections import defaultdict
from typing import Collection

from polymodal.data.augment import make_rng
from polymodal.errors import PolymodalError

FUNCTION_WORDS = frozenset(
    "a an the this that these those some any each every no one two three several many few "
    "of in on at to into onto from by with without for about over under near behind beside between through "
    "across along around up down out off and or but while as than then there here "
    "is are was were be been being has have had do does did it its his her their them they he she we you "
    "i me my our your who which what whose whom".split()
)
log = logging.getLogger(__name__)
_WORD = re.compile(r"^([A-Za-z][A-Za-z'-]*)([^A-Za-z]*)$")  # a word and its trailing punctuation


def _content_words(tokens: list[str]) -> dict[int, tuple[str, str]]:
    """Position -> (word, trailing punctuation) of each content word."""
    parts = {i: m.groups() for i, t in enumerate(tokens) if (m := _WORD.match(t))}
    return {i: wp for i, wp in parts.items() if wp[0].lower() not in FUNCTION_WORDS}


def _coordinated(between: list[str]) -> bool:
    """Words joined by "and"/"or" ("tan and white", "big, black and white"): swapping them keeps the meaning."""
    words = [t.lower().strip(",;") for t in between]
    return any(w in ("and", "or") for w in words) and all(w in FUNCTION_WORDS or not w for w in words)


def same_text(text: str) -> str:
    """A caption as compared with others: case, spacing and a final period aside ("A dog ." is "a dog")."""
    return " ".join(text.lower().split()).rstrip(" .")


def swapped_captions(caption: str, k: int = 2, seed: int = 0, exclude: Collection[str] = ()) -> list[str]:
    """Up to `k` distinct captions, each `caption` with two of its content words swapped. Deterministic for a given
    (caption, seed); fewer than `k` (or none) when the caption has too few different content words. A swap that
    reads as a text in ``exclude`` (`same_text` forms: the photo's other captions) is passed over."""
    tokens = caption.split()
    words = _content_words(tokens)
    positions = list(words)
    swaps = [(i, j) for a, i in enumerate(positions) for j in positions[a + 1:]
             if words[i][0].lower() != words[j][0].lower() and not _coordinated(tokens[i + 1 : j])]
    rng = make_rng(seed, zlib.crc32(caption.encode("utf-8")))
    out: list[str] = []
    for s in rng.permutation(len(swaps)):
        i, j = swaps[s]
        (wi, pi), (wj, pj) = words[i], words[j]
        new = list(tokens)
        new[i], new[j] = wj + pi, wi + pj
        text = " ".join(new)
        if text != caption and text not in out and same_text(text) not in exclude:
            out.append(text)
        if len(out) == k:
            break
    return out


HARD_NEGATIVE_MODES = ("data", "swap", "none")


def negatives_per_caption(pairs, mode: str = "data", per_caption: int = 2, seed: int = 0) -> list[tuple[str, ...]]:
    """The hard negatives of each pair: its own "negatives" ("data"), those or else `per_caption` word swaps of the
    caption ("swap"), or none ("none")."""
    if mode not in HARD_NEGATIVE_MODES:
        raise PolymodalError(f"hard_negatives must be one of {', '.join(HARD_NEGATIVE_MODES)}, got {mode!r}")
    if mode == "none":
        return [() for _ in pairs]
    # A negative that is one of the photo's own captions ("a man next to a woman" swapped is "a woman next to a
    # man", which may describe the same photo) would teach the model that a true caption is wrong: left out.
    own = defaultdict(set)
    for p in pairs:
        own[p.image].add(same_text(p.caption))
    out, dropped = [], []
    for p in pairs:
        given = tuple(n for n in p.negatives if same_text(n) not in own[p.image])
        dropped += [n for n in p.negatives if n not in given]
        out.append(given or (tuple(swapped_captions(p.caption, per_caption, seed, own[p.image]))
                             if mode == "swap" else ()))
    if dropped:
        log.warning("left out %d hard negative%s that %s a caption of the same photo (first: %r)", len(dropped),
                    "" if len(dropped) == 1 else "s", "is" if len(dropped) == 1 else "are", dropped[0])
    return out
