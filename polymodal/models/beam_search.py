"""Beam search over word pieces, in numpy: the PyTorch captioner and its ONNX export decode through this one loop.

The model is a function ``step(ids, origin) -> logits``: ``ids`` ``[N, t]`` are the N = images x beam sequences so far
([CLS] first), ``origin`` ``[N]`` says which row of the previous call each row continues (a step that keeps keys and
values reorders them by it), and ``logits`` ``[N, V]`` score the next piece.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any, Callable

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.models.inputs import as_images, check_count

log = logging.getLogger(__name__)

CLS, SEP, PAD = 101, 102, 0  # MiniLM's (BERT uncased) special word pieces
UNK, MASK = 100, 103  # never written: the export's tokenizer drops them in decoding, and neither reads as a word
NO_REPEAT = 3  # captions never repeat a 3-gram or a piece twice in a row (benchmarks/captioning.py --no-repeat)
MAX_BEAM = 20  # keys and values grow with beam x batch: --beam 1000 took 2.9 GB for one photo; 5+ rarely changes it
MAX_TOKENS = 512  # MiniLM's position table: a word piece past position 511 has no position embedding
STOPS = (1012, 999, 1029)  # ".", "!", "?": a caption at max_tokens that ends so reads whole, [SEP] or not


# word-piece decoding writes the pieces of "t-shirt", "man's" and "3.5" apart ("t - shirt", "man ' s", "3. 5"): the
# caption as it was written, so that it reads right and the COCO tokens it is scored on ("t-shirt", "man 's") match
# the references' (a spaced dash is never in Flickr8k's or COCO's captions; a hyphenated word is in 2%). "1, 000"
# stays: it may be a list
_JOINED = ((re.compile(r"(?<=\w) - (?=\w)"), "-"), (re.compile(r"(?<=\w) ' (?=(?:s|t|re|ve|ll|d|m)\b)"), "'"),
           (re.compile(r"\bo ' clock\b"), "o'clock"), (re.compile(r"(?<=\d) ?([.:]) (?=\d)"), r"\1"))


def caption_text(decoded: str) -> str:
    """A caption's decoded word pieces -> its text: hyphenated words, clitics and decimals written whole."""
    for pattern, joined in _JOINED:
        decoded = pattern.sub(joined, decoded)
    return decoded


def repeats(sequences: list[list[int]], n: int) -> list[list[int]]:
    """Per sequence of word pieces ([CLS] first), the pieces that would repeat one of its n-grams or its last
    piece if written next (the no-repeat rule; n < 2 forbids only the last piece)."""
    out = []
    for seq in sequences:
        seq = seq[1:]
        banned = {seq[-1]} if seq else set()
        if n >= 2 and len(seq) >= n - 1:
            tail = seq[len(seq) - n + 1:]
            banned.update(seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i : i + n - 1] == tail)
        out.append(sorted(banned))
    return out


def check_no_repeat(no_repeat, name: str = "no_repeat") -> int:
    if isinstance(no_repeat, bool) or not isinstance(no_repeat, Integral) or no_repeat < 0 or no_repeat == 1:
        raise PolymodalError(f"{name} must be 0 (repeats allowed) or an n-gram size >= 2, got {no_repeat!r}")
    return int(no_repeat)


def check_decoding(beam, max_tokens, no_repeat=NO_REPEAT, batch_size=1, flags: bool = False) -> tuple[int, ...]:
    """The decoding options of caption() -> (beam, max_tokens, no_repeat, batch_size) as ints, or one clear
    error naming the option (as a CLI flag when ``flags``)."""
    name = (lambda key: "--" + key.replace("_", "-")) if flags else (lambda key: key)
    beam, max_tokens = check_count(beam, name("beam")), check_count(max_tokens, name("max_tokens"))
    if beam > MAX_BEAM:
        raise PolymodalError(f"{name('beam')} must be at most {MAX_BEAM}, got {beam}: memory grows with the beam "
                             "and wider beams rarely change a caption")
    if max_tokens > MAX_TOKENS:
        raise PolymodalError(f"{name('max_tokens')} must be at most {MAX_TOKENS} (the text tower's positions), "
                             f"got {max_tokens}")
    return beam, max_tokens, check_no_repeat(no_repeat, name("no_repeat")), check_count(batch_size, name("batch_size"))


def check_search(beam, max_tokens, length_penalty, no_repeat) -> None:
    """beam_search's options (generate's too, which calls it without caption()'s checks): one clear error."""
    check_decoding(beam, max_tokens, no_repeat)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, Real) or not math.isfinite(length_penalty):
        raise PolymodalError(f"length_penalty must be a finite number (1.0 ranks captions by log-probability per "
                             f"piece, 0 by their total), got {length_penalty!r}")


def caption_batches(images: Any, batch_size: int, beam: int, max_tokens: int, no_repeat: int,
                    pieces_of: Callable[..., list[list[int]]], text_of: Callable[[list[int]], str],
                    owner: Any = None) -> list[str]:
    """caption() of both runtimes: an image or images (paths, PIL images, arrays) -> one caption each, after one
    check of the decoding options. ``pieces_of(batch, beam, max_tokens, no_repeat)`` writes the word pieces of a
    batch of images; ``text_of`` turns them into text. ``owner`` (the model) is told of empty and cut captions
    once (warn_once_if_unfinished)."""
    beam, max_tokens, no_repeat, batch_size = check_decoding(beam, max_tokens, no_repeat, batch_size)
    images = as_images(images)
    written = [pieces for i in range(0, len(images), batch_size)
               for pieces in pieces_of(images[i : i + batch_size], beam, max_tokens, no_repeat)]
    if owner is not None:
        kinds = unfinished(written, max_tokens)
        _LAST.call = (id(owner), kinds, max_tokens)  # for a served reply (last_unfinished)
        warn_once_if_unfinished(owner, kinds, max_tokens)
    return [text_of(pieces) for pieces in written]


_LAST = threading.local()  # this thread's last caption_batches call with an owner: (id(owner), kinds, max_tokens);
# .fix: the advice its warning gives there (see advising)


def last_unfinished(owner: Any) -> tuple[list[str | None], int] | None:
    """The `unfinished` kinds and max_tokens of ``owner``'s last caption() on this thread, or None. Per thread, not
    an attribute of the model: two threads captioning with one model (two apps sharing it, each with its model
    thread) could replace each other's between caption() and the read, and a reply for 3 photos held 1 result."""
    last = getattr(_LAST, "call", None)
    return last[1:] if last is not None and last[0] == id(owner) else None


def unfinished(written: list[list[int]], max_tokens: int) -> list[str | None]:
    """Per caption's word pieces: "empty" (the model ended it before any word), "cut" (max_tokens pieces:
    beam_search writes that many only when no end came, "a woman a woman a woman ... a") or None. One that reached
    max_tokens with a full stop is whole: the built-in captioner wrote 1 of 85 Flickr8k photos' captions so, whole
    but for [SEP] ("a woman in a white shirt is wearing a blue shirt and black shirt is sitting on the street.")."""
    return ["empty" if not pieces else "cut" if len(pieces) >= max_tokens and pieces[-1] not in STOPS else None
            for pieces in written]


CAPTION_FIX = "raise --max-tokens (max_tokens=), or, "  # what `polymodal caption` and caption() can do of a cut one


@contextmanager
def advising(fix: str):
    """Captions written on this thread while the block runs are warned of with ``fix`` (see unfinished_notes): a
    server's log, whose `serve` has no --max-tokens, says its own."""
    before = getattr(_LAST, "fix", CAPTION_FIX)
    _LAST.fix = fix
    try:
        yield
    finally:
        _LAST.fix = before


def unfinished_notes(kinds: list[str | None], max_tokens: int, fix: str = CAPTION_FIX) -> list[str]:
    """What is said of `unfinished` captions, by the CLI's warning and a served reply (whose client cannot change
    max_tokens: ``fix`` "")."""
    empty, cut, n = kinds.count("empty"), kinds.count("cut"), len(kinds)
    notes = [f"{empty} of {n} captions are empty: the model wrote its end before any word (as one trained on few "
             "photos or epochs may)"] if empty else []
    if cut:
        notes.append(f"{cut} of {n} captions reached max_tokens ({max_tokens} word pieces) before their end and are "
                     f"cut there: {fix}where they repeat themselves up to it, train the model longer or on more photos")
    return notes


def warn_once_if_unfinished(owner: Any, kinds: list[str | None], max_tokens: int) -> None:
    """Empty and cut captions (`unfinished`) read as the model's whole answer: say why, once per model (a server or
    a long `caption` run would repeat it)."""
    notes = [] if getattr(owner, "_warned_unfinished", False) else \
        unfinished_notes(kinds, max_tokens, getattr(_LAST, "fix", CAPTION_FIX))
    if notes:
        owner._warned_unfinished = True
    for note in notes:
        log.warning("%s; shown once per model", note)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def largest(x: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``x`` ``[B, n]``, the columns of its k largest values (ties: the lowest column first), as
    np.argpartition(-x, k - 1)[:, :k] finds them but in k argmax passes: over a step's candidates (images x beam x
    30,522) argpartition took ~40 ms, ~15% of `polymodal caption`'s decoding at beam 3 (caption_stage_ab.py of the
    stop-43 speed2 review: 1.18x less CPU, the same captions). x is left as it was."""
    rows = np.arange(x.shape[0])
    picked, values = np.empty((x.shape[0], k), dtype=np.intp), np.empty((x.shape[0], k), dtype=x.dtype)
    for j in range(k):
        picked[:, j] = x.argmax(1)
        values[:, j] = x[rows, picked[:, j]]
        x[rows, picked[:, j]] = -np.inf
    for j in reversed(range(k)):  # the first value taken from a column is the one to put back
        x[rows, picked[:, j]] = values[:, j]
    ordered = np.sort(picked, 1)
    # argmax takes NaN first and repeats a column when a row has fewer than k values above -inf: such rows (a broken
    # model's NaN; never in a beam search otherwise) get what argpartition gave, which puts NaN last
    if np.isnan(values).any() or (ordered[:, 1:] == ordered[:, :-1]).any():
        return np.argpartition(-x, k - 1, axis=1)[:, :k]
    return picked


def beam_search(step: Callable[[np.ndarray, np.ndarray], np.ndarray], images: int, beam: int, max_tokens: int,
                length_penalty: float = 1.0, no_repeat: int = 0) -> list[list[int]]:
    """The word pieces of the best caption per image (without [CLS]/[SEP]). Finished beams are ranked by
    log-probability / length**length_penalty. no_repeat=n (>= 2) forbids a piece that would repeat an n-gram of
    the caption so far or the piece just written; 0 allows repeats."""
    check_search(beam, max_tokens, length_penalty, no_repeat)
    b, k = images, beam
    ids = np.full((b * k, 1), CLS, dtype=np.int64)
    origin = np.arange(b * k)
    score = np.full((b, k), -np.inf, dtype=np.float32)
    score[:, 0] = 0.0  # one live beam per image at the start
    done = np.zeros(b * k, dtype=bool)
    # the best caption per image that finished and then left the beam (k live ones overtook its total
    # log-probability, then ended less likely per piece): kept aside, so the search never loses a caption it found
    kept: list[tuple[float, list[int]]] = [(-np.inf, [])] * b
    for _ in range(max_tokens):
        logp = log_softmax(np.asarray(step(ids, origin)))
        logp[:, [PAD, UNK, CLS, MASK]] = -np.inf
        if no_repeat:
            for row, banned in enumerate(repeats(ids.tolist(), no_repeat)):
                logp[row, banned] = -np.inf
        logp[done] = -np.inf
        logp[done, PAD] = 0.0  # a finished beam continues with padding at no cost
        vocab = logp.shape[-1]
        score_before = score
        cand = (score.reshape(-1, 1) + logp).reshape(b, k * vocab)
        top = largest(cand, k)
        flat = np.take_along_axis(top, np.argsort(-np.take_along_axis(cand, top, 1), axis=1, kind="stable"), 1)
        score = np.take_along_axis(cand, flat, 1)
        origin = ((flat // vocab) + np.arange(b)[:, None] * k).reshape(-1)
        token = (flat % vocab).reshape(-1)
        left = done & ~np.isin(np.arange(b * k), origin)  # finished rows no row continues: they leave the beam
        for row in np.flatnonzero(left):
            pieces = [t for t in ids[row].tolist() if t not in (PAD, CLS)]
            normed = float(score_before[row // k, row % k]) / max(len(pieces), 1) ** length_penalty
            if normed > kept[row // k][0]:
                kept[row // k] = (normed, [t for t in pieces if t != SEP])
        ids = np.concatenate([ids[origin], token[:, None]], 1)
        done = done[origin] | (token == SEP) | (token == PAD)
        if done.all():
            break
    lengths = np.maximum(((ids != PAD) & (ids != CLS)).sum(1), 1).astype(np.float32).reshape(b, k)
    normed = score / lengths**length_penalty
    best = normed.argmax(1)
    chosen = ids.reshape(b, k, -1)[np.arange(b), best]
    return [kept[i][1] if kept[i][0] > normed[i, best[i]] else [t for t in row.tolist() if t not in (PAD, CLS, SEP)]
            for i, row in enumerate(chosen)]
