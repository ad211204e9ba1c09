"""How much of a text a WordPiece vocabulary knows: its [UNK] pieces, and its words that are one piece of the
vocabulary rather than fragments ("chien" -> "chi ##en", "собака" -> "с ##о ##б ##а ##ка").

Measured with the bundled MiniLM's uncased English vocabulary (stop 54): English captions and questions hold 87% or
more whole words in every batch of 8 or more texts tried (Flickr8k's 5,000 captions, COCO mini's, 2,248 VQA yes/no
questions; 50% or more per text), French 64%, German 45%, Spanish 58%; Russian, Arabic, Greek, Hebrew, Hindi,
Korean, Polish and Turkish texts 0-25% per text (letters or fragments). The tower embeds such texts poorly.
"""

from __future__ import annotations

import numpy as np

SENTENCE = 3  # words: a text this long has the small words of its language ("a", "in", "the"), a label may not
FEW_WHOLE = 4  # a text of 3 or more words, at most 1 in 4 of them whole: mostly fragments (no English text measured)
BATCH_WHOLE = 0.75  # fewer whole words than this over 8 or more texts of 3 or more words: not English, mostly
BATCH_TEXTS = 8


_KINDS: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # a vocabulary's digest -> its piece_kinds
_KEEP = 8  # vocabularies remembered (a process loads one or two)


def piece_kinds(tok) -> tuple[np.ndarray, np.ndarray]:
    """Per id of a `tokenizers` WordPiece vocabulary: whether the piece continues a word ("##en"), and whether it
    holds a letter (a word of digits or punctuation is no word here). Read-only arrays, made once per vocabulary:
    every model load reads its tokenizer anew, and going over 30,000 pieces took ~40 ms each time (2 ms to key)."""
    key = _digest(tok)
    if key not in _KINDS:
        if len(_KINDS) >= _KEEP:
            del _KINDS[next(iter(_KINDS))]
        _KINDS[key] = _kinds(tok)
    return _KINDS[key]


def _digest(tok) -> bytes:
    """What piece_kinds reads of a tokenizer: its model (type, prefix, pieces and ids) and the tokens added to it."""
    import hashlib

    added = sorted((i, str(t.content)) for i, t in tok.get_added_tokens_decoder().items())
    return hashlib.sha256(tok.model.__getstate__() + repr(added).encode()).digest()


def _kinds(tok) -> tuple[np.ndarray, np.ndarray]:
    prefix = tok.model.continuing_subword_prefix
    vocab = tok.get_vocab()
    continues, letters = np.zeros(max(vocab.values()) + 1, bool), np.zeros(max(vocab.values()) + 1, bool)
    for piece, i in vocab.items():
        continues[i], letters[i] = piece.startswith(prefix), any(c.isalpha() for c in piece)
    continues.setflags(write=False)  # shared by every tokenizer of the vocabulary
    letters.setflags(write=False)
    return continues, letters


def piece_counts(kinds, unk_id: int, input_ids, attention_mask) -> tuple[np.ndarray, ...]:
    """Rows of [CLS] ... [SEP] ids (padded, mask) -> per row: its pieces, its [UNK] pieces, its words (that hold a
    letter; an [UNK] is one) and those of them that are one piece of the vocabulary."""
    continues, letters = kinds
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask).astype(bool)
    inner = mask.copy()
    inner[:, 0] = False
    inner[np.arange(len(ids)), mask.sum(1) - 1] = False  # less [CLS] and [SEP]
    cont = continues[ids] & inner
    words = inner & ~cont & letters[ids]
    followed = np.zeros_like(cont)
    followed[:, :-1] = cont[:, 1:]
    unknown = (ids == unk_id) & inner
    return inner.sum(1), unknown.sum(1), words.sum(1), (words & ~followed & ~unknown).sum(1)


def mostly_fragments(words: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """Per text: whether most of its words are fragments to the vocabulary (see FEW_WHOLE)."""
    return (words >= SENTENCE) & (FEW_WHOLE * whole <= words)


def sentences(words: np.ndarray) -> np.ndarray:
    """Per text: whether it is long enough for few_whole_words. English labels and keywords, one or two words with
    no small words between them, hold far fewer whole words than captions ("su ##shi", "gi ##raf ##fe", "cup ##cake
    ##s": 16 food names 25%, 16 animals 44%, COCO's 80 classes 56-100% a batch): they would read as another
    language."""
    return words >= SENTENCE


def few_whole_words(words: np.ndarray, whole: np.ndarray) -> bool:
    """Whether a batch's texts of 3 or more words, taken together, have too few whole words for English (see
    BATCH_WHOLE)."""
    long = sentences(words)
    return long.sum() >= BATCH_TEXTS and whole[long].sum() < BATCH_WHOLE * words[long].sum()
