"""A `tokenizers` tokenizer.json run as the model's tokenizer does: truncate, pad to the longest, ids and mask.

No torch and no transformers import: the ONNX runtime tokenizes with it, and so does the MiniLM text tower
(importing transformers costs about a second per process).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from polymodal.data.word_pieces import few_whole_words, mostly_fragments, piece_counts, piece_kinds, sentences
from polymodal.errors import PolymodalError

log = logging.getLogger("polymodal.encoders.text")  # where the warning was always logged from


def overflowed(encodings) -> int | None:
    """How many of a batch's `tokenizers` encodings were cut (their ``overflowing`` holds the rest), or None when
    there are none to ask (a slow transformers tokenizer)."""
    if not encodings:
        return None
    return sum(1 for e in encodings if getattr(e, "overflowing", None))


def warn_once_if_cut(owner, attention_mask, max_length: int, tower: str, cut: int | None = None) -> None:
    """Texts longer than the tower's token limit are cut (as every CLIP-style library does); say so once per
    model, since a long product description or caption then matches on its first part only. ``attention_mask``:
    a torch tensor or numpy array ``[B, L]``. ``cut``: how many were cut (overflowed), where the tokenizer says;
    else a text that fills the limit counts as cut (one that fits it exactly cannot be told apart)."""
    if getattr(owner, "_warned_cut", False) or attention_mask.shape[1] < max_length:
        return
    if cut is None:
        cut = int((attention_mask.sum(1) >= max_length).sum())
    warn_once_of_cut(owner, cut, max_length, tower)


def warn_once_of_cut(owner, cut: int, max_length: int, tower: str) -> None:
    """warn_once_if_cut's warning, for a caller that counted the ``cut`` texts itself (unpadded id lists)."""
    if cut and not getattr(owner, "_warned_cut", False):
        owner._warned_cut = True
        log.warning("a text reached the %s's limit of %d tokens and was cut there (%d in this batch): later words "
                    "do not count; shown once per model, later texts may be cut too", tower, max_length, cut)


def warn_once_if_unknown(owner, input_ids, attention_mask, tokenizer, texts: list[str], tower: str) -> None:
    """Texts whose word pieces are mostly [UNK] (a WordPiece vocabulary's one piece for every word it lacks: the
    bundled MiniLM's is uncased and mostly English, so Chinese characters and emoji read as [UNK]) embed alike
    whatever they say, and a search or caption in them ranks photos by the rest of the words, or by nothing; texts
    whose words are mostly fragments of words it knows (Russian, Arabic, Greek: letter by letter; French or German
    over a batch) embed poorly too: say so once per model, with an example. ``input_ids``/``attention_mask``: torch
    tensors or numpy arrays ``[B, L]``, [CLS] ... [SEP] per row; ``tokenizer``: a FastTokenizer, whose ``unk_id``
    None (a tokenizer with no such piece, as CLIP's byte-level BPE) says nothing."""
    if getattr(tokenizer, "unk_id", None) is None or getattr(owner, "_warned_unknown", False):
        return
    pieces, unknown, words, whole = tokenizer.piece_counts(input_ids, attention_mask)
    mostly, fragments = (unknown > 0) & (2 * unknown >= pieces), mostly_fragments(words, whole)
    if mostly.any():
        first = int(mostly.argmax())
        log.warning("%d of %d texts are mostly word pieces the %s does not know (e.g. %r: %d of its %d pieces are "
                    "[UNK]): words outside its vocabulary (the bundled MiniLM's is uncased and mostly English; most "
                    "Chinese characters and emoji are outside it) embed alike whatever they say; shown once per model",
                    int(mostly.sum()), len(texts), tower, texts[first], int(unknown[first]), int(pieces[first]))
    elif few_whole_words(words, whole):
        long = sentences(words)  # labels and keywords are not counted (see word_pieces.sentences)
        first = int(np.argmax(long & (whole < words)))
        log.warning("only %d%% of the words of these %d texts are in the %s's vocabulary (English captions: 87%% or "
                    "more; e.g. %r reads %r): the bundled MiniLM reads English, and words it splits into fragments "
                    "(other languages; rare names, as dog breeds) embed poorly, so searches, labels and training in "
                    "them work poorly; shown once per model",
                    int(100 * whole[long].sum() / words[long].sum()), int(long.sum()), tower, texts[first],
                    tokenizer.pieces(input_ids[first], attention_mask[first]))
    elif fragments.any():
        first = int(fragments.argmax())
        log.warning("%d of %d texts are mostly words the %s splits into fragments (e.g. %r: %d of its %d words are in "
                    "its vocabulary; it reads %r): its vocabulary is mostly English (the bundled MiniLM's; Cyrillic, "
                    "Arabic, Greek or Hebrew words read letter by letter), so such texts embed poorly whatever they "
                    "say; shown once per model", int(fragments.sum()), len(texts), tower, texts[first],
                    int(whole[first]), int(words[first]), tokenizer.pieces(input_ids[first], attention_mask[first]))
    else:
        return
    owner._warned_unknown = True


def unknown_words_note(model, text: str) -> str | None:
    """For one query (a served search, whose reply says what the server log would): a note when most of its word
    pieces are [UNK], or most of its words fragments, to ``model``'s WordPiece text tower (see
    warn_once_if_unknown), else None."""
    tokenizer = getattr(getattr(model, "text_tower", None), "_fast", None) or getattr(model, "tokenizer", None)
    if not isinstance(tokenizer, FastTokenizer) or tokenizer.unk_id is None:
        return None
    enc = tokenizer._encode(text, "the text")
    ids, mask = np.array([enc.ids]), np.array([enc.attention_mask])
    pieces, unknown, words, whole = (int(n[0]) for n in tokenizer.piece_counts(ids, mask))
    if unknown and 2 * unknown >= pieces:
        return (f"{unknown} of the query's {pieces} word pieces are unknown to the model's vocabulary ([UNK]: it is "
                "mostly English; most Chinese characters and emoji are outside it), so photos are ranked by the rest "
                "of the words, or by nothing: ask in English words")
    if mostly_fragments(np.array(words), np.array(whole)):
        return (f"{words - whole} of the query's {words} words are not in the model's vocabulary and read as "
                f"fragments ({tokenizer.pieces(ids[0], mask[0])!r}: it is mostly English; Cyrillic, Arabic, Greek or "
                "Hebrew words read letter by letter), so photos are ranked by little of what it says: ask in English "
                "words")
    return None


def unknown_words_notes(model, texts: list[str], at_most: int = 5) -> list[str]:
    """unknown_words_note for a served batch of texts (/v1/embed), each note naming its text's place in the list;
    past ``at_most`` notes, one line counts the rest (a batch of 256 Chinese texts gets 6 lines, not 256)."""
    notes = [f"texts[{i}]: {note}" for i, text in enumerate(texts) if (note := unknown_words_note(model, text))]
    rest = len(notes) - at_most
    return notes[:at_most] + ([f"and {rest} more texts mostly in unknown word pieces"] if rest > 0 else [])


def cut_texts(model, texts: list[str]) -> tuple[list[int], int]:
    """Which of ``texts`` ``model``'s text tower cuts at its token limit (as encode_text does, warning once per
    model), and that limit; ([], 0) where its tokenizer cannot tell (a slow transformers one)."""
    fast = getattr(getattr(model, "text_tower", None), "_fast", None) or getattr(model, "tokenizer", None)
    if isinstance(fast, FastTokenizer):
        limit, encodings = fast.tok.truncation["max_length"], fast.tok.encode_batch(texts)
    elif hasattr(model, "text_tokenizer"):  # a transformers tokenizer (CLIP; a text tower without tokenizer.json)
        tokenizer, limit = model.text_tokenizer
        encodings = getattr(tokenizer(texts, truncation=True, max_length=limit), "encodings", None) or []
    else:
        return [], 0
    return [i for i, e in enumerate(encodings) if e.overflowing], limit


def cut_texts_notes(model, texts: list[str], one: str | None = None) -> list[str]:
    """For a served reply's warnings (the server log says it once per model, a client never): a note naming the
    texts ``model`` cuts (`cut_texts`), or none. ``one``: what a lone text is called ("the query")."""
    cut, limit = cut_texts(model, texts)
    if not cut:
        return []
    which = one or ", ".join(f"texts[{i}]" for i in cut[:5]) + (f" and {len(cut) - 5} more" if len(cut) > 5 else "")
    return [f"{which} reached the text tower's limit of {limit} tokens and {'was' if len(cut) == 1 else 'were'} cut "
            "there: later words do not count; send shorter texts"]


def check_unicode(texts: list[str], what: str | None = None) -> None:
    """One error naming the first text holding a lone surrogate (not a character: bytes that were not UTF-8, or half
    of an escaped pair in JSON), which no tokenizer takes. The message leaves the text out: it could not be printed.
    ``what`` names a lone text ("the question"); default "text N"."""
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PolymodalError(f"{what or f'text {i + 1}'} is not valid Unicode (U+{ord(text[exc.start]):04X} at "
                                 f"character {exc.start + 1}, half of a surrogate pair or bytes that were not UTF-8); "
                                 "send it as UTF-8 text") from None


# texts tokenized at once where a whole list is counted or tokenized (batches by length, a cache's word pieces): the
# encodings of a whole list, each padded to the longest, were ~1.9 GB at once for 440,000 questions (repro tokcache)
TOKENIZE_CHUNK = 4096


class FastTokenizer:
    """tokenizer.json -> padded int64 ids and mask, as the PyTorch model's tokenizer makes them."""

    last_cut: int | None = None  # how many texts of the last call were cut at max_length
    unk_id: int | None = None  # a WordPiece vocabulary's [UNK] (warn_once_if_unknown); None for other tokenizers

    def __init__(self, path, max_length: int, pad_id: int, pad_token: str) -> None:
        """``path``: a tokenizer.json, or a tokenizers.Tokenizer already read from one."""
        from tokenizers import Tokenizer

        self.tok = path if isinstance(path, Tokenizer) else Tokenizer.from_file(str(path))
        self.tok.enable_truncation(max_length=max_length)
        self.tok.enable_padding(pad_id=pad_id, pad_token=pad_token)  # to the longest row, as padding=True does
        if type(self.tok.model).__name__ == "WordPiece":  # a BPE's unk_token may be its end token (CLIP's)
            self.unk_id = self.tok.token_to_id(self.tok.model.unk_token)
        self._kinds = None  # word_pieces.piece_kinds, made on first use

    def piece_counts(self, input_ids, attention_mask) -> tuple[np.ndarray, ...]:
        """Per row of a WordPiece batch: pieces, [UNK] pieces, words and whole words (see word_pieces)."""
        if self._kinds is None:
            self._kinds = piece_kinds(self.tok)
        return piece_counts(self._kinds, self.unk_id, input_ids, attention_mask)

    def pieces(self, input_ids, attention_mask, at_most: int = 12) -> str:
        """A row's word pieces between [CLS] and [SEP], as a warning shows how a text reads ("chi ##en ...")."""
        ids = [int(i) for i, m in zip(np.asarray(input_ids), np.asarray(attention_mask)) if m][1:-1]
        return " ".join(self.tok.id_to_token(i) for i in ids[:at_most]) + (" ..." if len(ids) > at_most else "")

    @classmethod
    def from_model_folder(cls, folder: Path, max_length: int) -> "FastTokenizer | None":
        """The tokenizer of a Hugging Face model folder, or None when it has no tokenizer.json or no pad token."""
        if not (folder / "tokenizer.json").is_file():
            return None
        pad_token = None
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            try:
                pad_token = pad_token or json.loads((folder / name).read_text()).get("pad_token")
            except (OSError, ValueError):
                continue
        if isinstance(pad_token, dict):  # {"content": "[PAD]", ...} in newer files
            pad_token = pad_token.get("content")
        tokenizer = cls(folder / "tokenizer.json", max_length, 0, "[PAD]")
        pad_id = tokenizer.tok.token_to_id(pad_token) if isinstance(pad_token, str) else None
        if pad_id is None:
            return None
        tokenizer.tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
        return tokenizer

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        try:
            enc = self.tok.encode_batch(texts)
        except TypeError:  # what tokenizers raises for a lone surrogate (bad bytes from a shell, "\ud800" in JSON)
            check_unicode(texts)
            raise
        self.last_cut = overflowed(enc)  # for warn_once_if_cut: a text that exactly fits is not cut
        return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}

    def counts(self, texts: list[str]) -> list[int] | None:
        """Each text's token count as __call__ would pad it (cut at max_length), for ordering batches by length;
        None for a text tokenizers refuses (__call__ then raises its error)."""
        try:
            return [sum(e.attention_mask) for start in range(0, len(texts), TOKENIZE_CHUNK)
                    for e in self.tok.encode_batch(texts[start : start + TOKENIZE_CHUNK])]
        except TypeError:  # a lone surrogate
            return None

    def _encode(self, text: str, what: str, **kwargs):
        """tok.encode(text), with one PolymodalError for a lone surrogate (a question or choice from a shell in
        another encoding) instead of tokenizers' TypeError traceback, as __call__ gives for a batch."""
        try:
            return self.tok.encode(text, **kwargs)
        except TypeError:
            check_unicode([text], what)
            raise

    def question_with_answer(self, question: str, answer: str, what: str = "a choice") -> str:
        """"QUESTION ANSWER", the text an ITM head scores a candidate answer by, with the question's end dropped when
        the two are longer than the model reads: cutting at the limit would drop the answer, and every candidate
        outside the vocabulary would then score the same (the first given winning the tie). ``what`` names the
        answer in an error ("the answer" for explain())."""
        text = f"{question} {answer}"
        # from a shell in another encoding: one error, not a traceback (explain() gets here before the question is
        # encoded anywhere else)
        check_unicode([question], "the question")
        check_unicode([answer], what)
        if not self.tok.encode(text).overflowing:
            return text
        limit = self.tok.truncation["max_length"]
        room = limit - 2 - len(self.tok.encode(answer, add_special_tokens=False).ids)  # [CLS] .. [SEP]
        if room < 1:  # the answer alone fills the model's length: nothing of the question fits
            return text
        kept = self.tok.encode(question, add_special_tokens=False).offsets[room - 1][1]
        return f"{question[:kept]} {answer}"

    def warn_if_question_cut(self, question: str, limit: str) -> bool:
        """A question longer than the model reads loses its end (often the part that asks): say so, and whether it
        was said. ``limit`` names the setting, e.g. "max_question_tokens=32"."""
        encoding = self._encode(question, "the question")
        if encoding.overflowing:
            cut = sum(sum(o.attention_mask) - 2 for o in encoding.overflowing)  # each is [CLS] .. [SEP], padded
            logging.getLogger("polymodal.models.fusion_encoder").warning(
                "the question is %d word pieces longer than this model reads (%s); its end was cut off: ask it in "
                "fewer words", cut, limit)
        return bool(encoding.overflowing)
