"""Caption metrics: BLEU-1..4 and CIDEr-D, computed by pycocoevalcap (the COCO caption evaluation's own scorers).

Captions are compared as the COCO evaluation's PTB tokenizer leaves them before scoring (that tokenizer needs Java;
the scorers themselves are plain Python): lower case, punctuation dropped, hyphenated words and numbers kept whole,
clitics ('s, n't, 're ...) their own tokens, brackets as "-lrb-" and "-rrb-" (pycocoevalcap lower-cases them before
it drops its "-LRB-"). On the 5,400 Flickr8k-dev and COCO-mini captions this gives PTB's tokens but for 2 (an
abbreviation's final full stop, "d.c."). Both sides are first read as the captioner's tokenizer reads text (see
as_captioner_reads: no accents, no invisible format characters), as PTB's lower case already leaves case out.
CIDEr's word weights come from the references of the evaluated set, as in the COCO evaluation: scores are
comparable between models on the same set, not across sets.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)
# CIDEr-D weighs each n-gram by how few of the set's photos it describes: over one photo every weight is 0, so the
# score is 0 whatever the caption. Below this many photos caption_scores gives None for it.
MIN_CIDER_PHOTOS = 2
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})  # PTB reads curly as straight


@lru_cache(maxsize=1)
def _token_pattern() -> re.Pattern:
    """PTB's tokens as one pattern (compiled on first use: the combining marks take a pass over Unicode's BMP)."""
    import unicodedata

    # a letter (café, jalapeño) or digit, with the combining marks that follow it (Hindi, Thai, a decomposed é)
    marks = re.escape("".join(chr(i) for i in range(0x300, 0x10000) if unicodedata.category(chr(i)).startswith("M")))
    alnum = rf"[^\W_][{marks}]*"
    # t-shirt, 10:30, AT&T, 3.5 and 1,000 stay one token, as PTB keeps them; "dog,cat" is two
    word = rf"(?:{alnum})+(?:[-./:&](?:{alnum})+|(?<=\d),\d+)*"
    dropped = "\u2013\u2014\u2026\u00ab\u00bb\u2039\u203a"  # dashes, ellipsis, guillemets: punctuation PTB drops
    return re.compile(rf"o'clock|{word}(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|{word}|[()\[\]{{}}]"
                      rf"|[^\s\w.?!,:;'`\"()\[\]{{}}\-{marks}{dropped}]")


def caption_tokens(text: str) -> str:
    """"A dog's T-shirt, (red)." -> "a dog 's t-shirt -lrb- red -rrb-" (the form the scorers compare: PTB's)."""
    text = re.sub(r"\bcannot\b", "can not", text.lower().translate(_QUOTES))
    return " ".join(_BRACKETS.get(t, t) for t in _token_pattern().findall(text))


def as_captioner_reads(text: str) -> str:
    """"Un café" -> "Un cafe": accents (combining marks, once decomposed) and invisible format characters (U+200B,
    a soft hyphen) removed, as the normaliser of the captioners' uncased MiniLM vocabulary does before it sees a
    caption. No caption they write has "café", so an accented word of a reference is one no captioner here can
    match (the reference "a woman reads in a café with a jalapeño pizza", written back by the captioner as closely
    as it can, matched 7 of its 9 words). Both sides are compared in this form, as both are lower-cased; Flickr8k's
    and COCO's captions are plain ASCII, and score as before."""
    import unicodedata

    text = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(c for c in text if unicodedata.category(c) not in ("Mn", "Cf")))


def scorers() -> tuple[type, type]:
    """pycocoevalcap's Bleu and Cider, or one clear error: evaluate_captions asks before captioning any photo."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as exc:
        raise PolymodalError("caption metrics need pycocoevalcap: pip install 'polymodal[captions]'") from exc
    return Bleu, Cider


def caption_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str],
                   per_photo: list | None = None) -> dict[str, float | None]:
    """Corpus BLEU-1..4 and CIDEr-D of one generated caption per image against that image's reference captions
    (CIDEr-D None below MIN_CIDER_PHOTOS images). ``per_photo``, a list, gets each image's own CIDEr-D (the
    corpus figure is their mean; word weights from the whole set), when CIDEr-D is scored."""
    if len(references) != len(hypotheses):
        raise PolymodalError(f"{len(hypotheses)} captions for {len(references)} sets of references; give one each")
    if not hypotheses:
        raise PolymodalError("no captions to score")
    if any(not refs for refs in references):
        raise PolymodalError("every image needs at least one reference caption")
    Bleu, Cider = scorers()
    gts = {i: [caption_tokens(as_captioner_reads(r)) for r in refs] for i, refs in enumerate(references)}
    empty = [r for refs, tokens in zip(references, gts.values()) for r, t in zip(refs, tokens) if not t]
    if empty:  # "...", "!!" or zero-width characters: scored as a reference with no words, which no caption matches
        log.warning("%d reference caption%s no words once tokenised as COCO does (punctuation or invisible "
                    "characters only, first: %r): "
                    "scored as empty references", len(empty), " has" if len(empty) == 1 else "s have", empty[0][:40])
    res = {i: [caption_tokens(as_captioner_reads(h))] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider = None
    if len(hypotheses) >= MIN_CIDER_PHOTOS:
        cider, each = Cider().compute_score(gts, res)
        cider = float(cider)
        if per_photo is not None:
            per_photo.extend(float(c) for c in each)
    return {**{f"bleu{n}": float(b) for n, b in enumerate(bleu, 1)}, "cider": cider}


def _with_references(pairs):
    """(pairs, image index -> its captions) for a PairSet, `polymodal.eval.retrieval.read_pairs`'s Pairs, or the
    path(s) of pair files, so that each of the ways to read pairs works here."""
    import numpy as np

    if isinstance(pairs, (str, Path, list, tuple)):
        from polymodal.data.pairs import read_pair_sources

        pairs = read_pair_sources(list(pairs) if isinstance(pairs, (list, tuple)) else [pairs])
    if hasattr(pairs, "captions_of"):
        return pairs, pairs.captions_of
    if hasattr(pairs, "caption_image") and hasattr(pairs, "captions"):
        owner = np.asarray(pairs.caption_image)
        return pairs, lambda i: [pairs.captions[c] for c in np.flatnonzero(owner == i)]
    raise PolymodalError(f"evaluate_captions takes pair files or pairs read by polymodal.data.pairs.read_pair_sources "
                         f"or polymodal.eval.retrieval.read_pairs, not {type(pairs).__name__}")


def evaluate_captions(model, pairs, beam: int = 3, max_tokens: int = 20, limit: int | None = None,
                      examples: int = 5, batch_size: int = 16, progress: bool = True, details: list | None = None,
                      **decoding) -> dict:
    """Caption each photo of a PairSet (every caption of a photo is a reference) and score the captions. Photos
    that cannot be read are counted and left out; ``decoding`` (e.g. no_repeat) goes to model.caption.
    ``details``, a list, gets one dict per photo: its caption and every reference (or why it could not be read)."""
    from polymodal.data.images import draft_size_of
    from polymodal.data.pairs import open_pair_image  # reads files and images inside tar shards alike
    from polymodal.eval.limit import check_limit
    from polymodal.models.beam_search import NO_REPEAT, check_decoding
    from polymodal.models.inputs import each_or_error, readable_results
    from polymodal.progress import progress_bar

    # checked before any photo: a bad option raised inside the loop would read as "photos could not be read"
    beam, max_tokens, _, batch_size = check_decoding(beam, max_tokens, decoding.get("no_repeat", NO_REPEAT),
                                                     batch_size)
    check_limit(limit)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise PolymodalError(f"examples must be a whole number of at least 0, got {examples!r}")
    scorers()  # missing, it would fail after every photo was captioned
    pairs, refs_of = _with_references(pairs)
    images = list(pairs.images[:limit] if limit else pairs.images)
    names = pairs.image_names() if hasattr(pairs, "image_names") else [str(image) for image in pairs.images]
    size = draft_size_of(model)  # camera photos decode as `polymodal caption` reads them
    with progress_bar(total=len(images), desc="captioning", unit="img", disable=not progress) as bar:
        def caption_batch(chunk: list) -> list[tuple[str]]:  # tuples: each_or_error gives a failed photo its error
            out = [(c,) for c in model.caption([open_pair_image(p, size) for p in chunk], beam=beam,
                                                 max_tokens=max_tokens, **decoding)]
            bar.update(len(chunk))
            return out

        results = each_or_error(caption_batch, images, batch_size)  # one unreadable photo: the batch goes one by one
        bar.update(len(images) - bar.n)  # the unreadable ones were looked at too
    kept = readable_results(results, "photo")
    hyps, unreadable = [results[i][0] for i in kept], len(images) - len(kept)
    if len(kept) < MIN_CIDER_PHOTOS:
        log.warning("CIDEr-D needs at least %d photos (its word weights come from the set): scored BLEU only",
                    MIN_CIDER_PHOTOS)
    refs = [refs_of(i) for i in kept]
    each: list = []  # each photo's CIDEr-D: --out's items, and --page's order (the lowest first)
    scores = caption_scores(refs, hyps, each)
    if details is not None:
        said = {i: {"caption": h, "references": r, **({"cider": round(c, 4)} if each else {})}
                for i, h, r, c in zip(kept, hyps, refs, each or [None] * len(kept))}
        details.extend({"image": names[i], **(said[i] if i in said else {"error": results[i]})}
                       for i in range(len(images)))
    # 4 decimals, as every eval command's figures (caption_scores' stay exact for training and export checks)
    return {"images": len(kept), "unreadable": unreadable,
            **{k: v if v is None else round(v, 4) for k, v in scores.items()},
            "examples": [{"image": names[i], "caption": h, "reference": r[0]}
                         for i, h, r in list(zip(kept, hyps, refs))[:examples]]}
