"""Text search (s42): the tokenizer digest in the text-bank key is computed once per model and tokenizer (it cost
~50 ms a search), and a tokenizer swapped in afterwards still changes the key."""

import polymodal
from polymodal.apps import text_search
from test_s41_apps import clip_file  # noqa: F401 (a fixture)


def test_the_tokenizer_digest_is_kept_until_the_tokenizer_changes(clip_file, monkeypatch):  # noqa: F811
    file, tok_a, tok_b = clip_file
    a = polymodal.load(str(file), tokenizer=str(tok_a))
    b = polymodal.load(str(file), tokenizer=str(tok_b))
    first = text_search.text_signature(a)
    calls = []
    real = text_search._tokenizer_spec_digest
    monkeypatch.setattr(text_search, "_tokenizer_spec_digest", lambda m: calls.append(m) or real(m))
    assert text_search.text_signature(a) == first and calls == []  # kept
    a.tokenizer = b.tokenizer  # another tokenizer object: digested again, B's digest
    assert text_search.text_signature(a) == text_search.text_signature(b) != first and len(calls) == 2
