"""Image->text and text->text retrieval over your own texts: captions, product descriptions, labels, one per line.

The texts' embeddings are cached (per model and list of texts), so a second search over the same file embeds only
the query. Works with every embedding model and runtime (numpy only here: the ONNX runtime needs no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from polymodal.cache import cache_key, load_cached, store_cached
from polymodal.data.jsonl import UTF16_FIX, utf16_or_binary
from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError
from polymodal.models.inputs import as_texts, check_count

_CHUNK = 8192  # texts scored at a time
_ENCODE_CHUNK = 1024  # texts embedded between two updates of the bar (a multiple of encode_text's batches)
_SCORES = 1 << 24  # floats in one block of query x text scores (64 MB)


@dataclass
class TextHit:
    text: str
    score: float  # cosine similarity
    line: int  # 1-based line of the text in its file (or position in the list)


def read_text_lines(path: str | Path, what: str = "texts") -> tuple[list[str], list[int]]:
    """The non-empty lines of a UTF-8 text file that do not start with # (a BOM is dropped), and their line numbers."""
    one = f"one {what.removesuffix('s')} per line"  # "one text per line"
    try:
        data = Path(path).read_bytes()
        if utf16_or_binary(data[:4096]):
            raise PolymodalError(f"cannot read {what} file {path}: it is {UTF16_FIX}, with {one}")
        raw = data.decode("utf-8-sig")  # -sig: a BOM from Notepad is not text
    except FileNotFoundError:
        raise PolymodalError(f"{what} file not found: {path}; pass a text file with {one}") from None
    except IsADirectoryError:
        raise PolymodalError(f"{path} is a folder; pass a text file with one of the {what} per line") from None
    except UnicodeDecodeError as exc:  # say where: "position 85316" is no place an editor shows
        line = exc.object[: exc.start].count(b"\n") + 1
        raise PolymodalError(f"cannot read {what} file {path}: line {line} is not UTF-8 (byte "
                             f"0x{exc.object[exc.start]:02x}); save it as UTF-8, with {one}") from None
    except OSError as exc:
        raise PolymodalError(f"cannot read {what} file {path} ({exc}); pass a UTF-8 text file with {one}") from None
    # split on CRLF, CR and LF only: str.splitlines would also split a caption at a form feed, U+0085 or U+2028,
    # giving two texts and line numbers an editor does not show. A line of zero-width or control characters alone
    # is as blank as an empty one (a tokenizer finds no word in it: it embedded as the empty text)
    kept = [(n, line.strip()) for n, line in enumerate(raw.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1)
            if not is_blank(line) and not line.lstrip().startswith("#")]
    if not kept:
        raise PolymodalError(f"{path} holds no {what}; write {one} (lines starting with # are comments)")
    return [t for _, t in kept], [n for n, _ in kept]


def text_signature(model) -> tuple[str, ...]:
    """What decides a model's text vectors besides its key: the runtime (an ONNX export shares the model's key but
    may run an int8 text tower, whose variant is named too) and a digest of its tokenizer, which the key leaves out
    (``polymodal.load(FILE, tokenizer=DIR)`` gives a checkpoint the same key whichever tokenizer folder it reads)."""
    runtime = f"{type(model).__module__}.{type(model).__name__}"
    variant = str(getattr(model, "variants", {}).get("text", ""))
    return runtime, *(part for part in (variant, _tokenizer_digest(model)) if part)  # (a model with neither: as before)


def _tokenizer_spec_digest(model) -> str:
    """A digest of the tokenizer a model keeps as ``model.tokenizer`` (a CLIP checkpoint's, which
    ``tokenizer=DIR`` picks; an ONNX export's tokenizer.json): vocabulary, merges, normalisation, special tokens and
    the length texts are cut at; "" for a model with no such tokenizer (the lite towers' text tower is built in,
    and their key covers it). The padding and truncation settings a call leaves behind are not part of it: they
    change no text's vector, and would change the digest after the first call."""
    import hashlib
    import json

    tok = getattr(model, "tokenizer", None)
    tok = getattr(tok, "backend_tokenizer", None) or getattr(tok, "tok", None) or tok  # transformers / FastTokenizer
    if tok is None:
        return ""
    if hasattr(tok, "to_str"):  # a tokenizers.Tokenizer
        spec = json.loads(tok.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
    elif hasattr(tok, "get_vocab"):  # a slow transformers tokenizer: its vocabulary, merges and special tokens
        spec = {"vocab": tok.get_vocab(), "merges": [list(m) for m in sorted(getattr(tok, "bpe_ranks", {}), key=str)],
                "special": list(getattr(tok, "all_special_tokens", []))}
    else:
        return ""
    max_length = getattr(model, "max_length", None) or getattr(model, "_max_length", None)
    text = json.dumps([spec, max_length], default=str)  # (tokenizers writes its vocabulary in id order)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tokenizer_digest(model) -> str:
    """_tokenizer_spec_digest, kept on the model while its tokenizer object and length stay the same: serialising
    a 30,000-word vocabulary took ~50 ms, on every search of a list of texts."""
    tok = getattr(model, "tokenizer", None)
    lengths = (getattr(model, "max_length", None), getattr(model, "_max_length", None))
    memo = getattr(model, "_polymodal_tokenizer_digest", None)
    if memo is not None and memo[0] is tok and memo[1] == lengths:  # (the memo holds tok: its id is not reused)
        return memo[2]
    digest = _tokenizer_spec_digest(model)
    try:
        model._polymodal_tokenizer_digest = (tok, lengths, digest)
    except AttributeError:  # a model class with __slots__: no memo
        pass
    return digest


def _text_bank(model, texts: Sequence[str], progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """([U, dim] float16 embeddings of the distinct texts, memory-mapped from the cache; [N] the row of each text
    there). A line written twice is embedded once, and scores exactly like its twin. ``progress``: a bar while
    texts not cached yet are embedded (100,000 lines take minutes on a CPU)."""
    rows: dict[str, int] = {}
    which = np.fromiter((rows.setdefault(t, len(rows)) for t in as_texts(texts)), np.int64)
    distinct = list(rows)
    path, cached = load_cached(cache_key(model.key, *text_signature(model), *distinct), "text-bank")
    if cached is not None and cached.shape == (len(distinct), model.dim):
        return cached, which
    from polymodal.progress import progress_bar

    bank = np.empty((len(distinct), model.dim), np.float16)  # filled a chunk at a time: no float32 copy of it all
    with progress_bar(total=len(distinct), desc="texts", unit="text",
                      disable=not progress or len(distinct) <= _ENCODE_CHUNK) as bar:
        for start in range(0, len(distinct), _ENCODE_CHUNK):
            bank[start : start + _ENCODE_CHUNK] = model.encode_text(distinct[start : start + _ENCODE_CHUNK])
            bar.update(min(_ENCODE_CHUNK, len(distinct) - start))
    return store_cached(path, bank), which


def text_embeddings(model, texts: Sequence[str]) -> np.ndarray:
    """[N, dim] float32 `model.encode_text(texts)`, cached on disk per model (key and version), runtime, tokenizer
    (see text_signature) and list of texts."""
    bank, which = _text_bank(model, texts)
    return np.asarray(bank[which], np.float32)


def search_texts(model, query_vectors, texts: Sequence[str], k: int = 10,
                 lines: Sequence[int] | None = None, progress: bool = False) -> list[list[TextHit]]:
    """The k texts nearest each query row ([Q, D] or [D], e.g. model.encode_image([...])) by cosine; equal scores
    in file order (a line written twice is listed twice, with each line number). ``progress``: a bar while the
    texts are embedded the first time."""
    from polymodal.index.store import query_matrix
    from polymodal.registry import require_embedding

    if not callable(getattr(model, "encode_text", None)):  # a name ("lite") or a VQA model: one error, not an
        require_embedding(model)  # AttributeError from model.key (a text-only model is fine: it ranks texts)
    k = check_count(k, "k")
    texts = as_texts(texts)
    lines = list(lines) if lines is not None else list(range(1, len(texts) + 1))
    if len(lines) != len(texts):  # a short list ended in an IndexError
        raise PolymodalError(f"got {len(lines)} line numbers for {len(texts)} texts; pass one per text "
                             "(read_text_lines returns both)")
    q = query_matrix(query_vectors)
    bank, which = _text_bank(model, texts, progress)
    if q.shape[1] != bank.shape[1]:
        raise PolymodalError(f"query vectors have dimension {q.shape[1]}, the texts' {bank.shape[1]} ({model.key}); "
                             f"embed queries with {model.key}")
    # the bank a chunk at a time and the queries a block at a time: a million texts need neither a float32 copy
    # of the whole bank nor a [Q, N] float32 score matrix for many queries
    n = len(bank)
    inv = np.concatenate([np.zeros(0, np.float32)] + [
        1 / np.maximum(np.linalg.norm(np.asarray(bank[i : i + _CHUNK], np.float32), axis=1), 1e-12)
        for i in range(0, n, _CHUNK)])
    out: list[list[TextHit]] = []
    step = max(1, _SCORES // max(1, len(texts)))
    for qs in range(0, len(q), step):
        block = q[qs : qs + step]
        scores = np.empty((len(block), n), np.float32)
        for i in range(0, n, _CHUNK):
            part = np.asarray(bank[i : i + _CHUNK], np.float32) * inv[i : i + _CHUNK, None]
            scores[:, i : i + _CHUNK] = block @ part.T
        np.clip(scores, -1.0, 1.0, out=scores)  # cosines; float32 rounding put a text's match with itself above 1
        out += [[TextHit(texts[j], float(row[j]), lines[j]) for j in _top(row, k)] for row in scores[:, which]]
    return out


def _top(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first, equal scores in index order (a partition, not a full sort)."""
    if k < len(row):
        kth = np.partition(row, len(row) - k)[len(row) - k]
        candidates = np.flatnonzero(row >= kth)
    else:
        candidates = np.arange(len(row))
    return candidates[np.lexsort((candidates, -row[candidates]))][:k]
