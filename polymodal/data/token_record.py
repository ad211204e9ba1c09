"""The tokenizer's encodings of the texts a model embeds, kept for whoever asked for them: the server's replies say
which texts were cut at the token limit, or read as unknown word pieces, from the one tokenizer pass that embedded
them (tokenizing each text a second time for that took ~1-4% of a text request).

    with recording_encodings() as kept:         # on the thread that calls the model
        vectors = model.encode_text(texts)
    kept.get(texts[0])                           # its `tokenizers` Encoding; None where the tokenizer keeps none
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_local = threading.local()  # the model thread's recording: another thread's tokenizing never lands in it


@contextmanager
def recording_encodings():
    """Within: each text a text tower tokenizes on this thread -> its Encoding, in the dict yielded (a text given
    twice is tokenized alike: one entry)."""
    outer = getattr(_local, "kept", None)
    _local.kept = kept = {}
    try:
        yield kept
    finally:
        _local.kept = outer


def record_encodings(texts, encodings) -> None:
    """What a tokenizing call hands in: its texts and their `tokenizers` encodings (None or empty from a slow
    transformers tokenizer: nothing kept). Nothing happens outside `recording_encodings`."""
    kept = getattr(_local, "kept", None)
    if kept is not None and encodings:
        kept.update(zip(texts, encodings))
