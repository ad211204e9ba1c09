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
from polymodal.errors import PolymodalError


@dataclass
class TextHit:
    text: str
    score: float  # cosine similarity
    line: int  # 1-based line of the text in its file (or position in the list)


def read_text_lines(path: str | Path, what: str = "texts") -> tuple[list[str], list[int]]:
    """The non-empty lines of a UTF-8 text file that do not start with # (a BOM is dropped), and their line numbers."""
    try:
        raw = Path(path).read_text(encoding="utf-8-sig")  # -sig: a BOM from Notepad is not text
    except FileNotFoundError:
        raise PolymodalError(f"{what} file not found: {path}; pass a text file with one per line") from None
    except IsADirectoryError:
        raise PolymodalError(f"{path} is a folder; pass a text file with one of the {what} per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolymodalError(f"cannot read {what} file {path} ({exc}); pass a UTF-8 text file with one per line") from None
    # split on newlines only (reading made CRLF and CR into "\n"): str.splitlines would also split a caption at a
    # form feed, U+0085 or U+2028, giving two texts and line numbers an editor does not show
    kept = [(n, line.strip()) for n, line in enumerate(raw.split("\n"), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not kept:
        raise PolymodalError(f"{path} holds no {what}; write one per line (lines starting with # are comments)")
    return [t for _, t in kept], [n for n, _ in kept]


def text_embeddings(model, texts: Sequence[str]) -> np.ndarray:
    """[N, dim] float32 `model.encode_text(texts)`, cached on disk per model (key and version), runtime and list of
    texts (the ONNX export shares the model's key but may run an int8 text tower)."""
    runtime = f"{type(model).__module__}.{type(model).__name__}"
    path, cached = load_cached(cache_key(model.key, runtime, *texts), "text-bank")
    if cached is not None and cached.shape == (len(texts), model.dim):
        return np.asarray(cached, dtype=np.float32)
    return np.asarray(store_cached(path, np.asarray(model.encode_text(list(texts)), dtype=np.float16)), np.float32)


def search_texts(model, query_vectors, texts: Sequence[str], k: int = 10,
                 lines: Sequence[int] | None = None) -> list[list[TextHit]]:
    """The k texts nearest each query row ([Q, D] or [D], e.g. model.encode_image([...])) by cosine."""
    from polymodal.index.store import query_matrix

    q = query_matrix(query_vectors)
    bank = text_embeddings(model, texts)
    if q.shape[1] != bank.shape[1]:
        raise PolymodalError(f"query vectors have dimension {q.shape[1]}, the texts' {bank.shape[1]} ({model.key}); "
                             f"embed queries with {model.key}")
    bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    scores = q @ bank.T
    k = min(k, len(texts))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    lines = list(lines) if lines is not None else list(range(1, len(texts) + 1))
    return [[TextHit(texts[j], float(row[j]), lines[j]) for j in order] for row, order in zip(scores, top)]
