"""Stop 56 (perf): the server's text notes (cut at the token limit, unknown word pieces) come from the tokenizer pass
that embedded the texts, not from a second one."""

from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.serve import create_app  # noqa: E402

RUSSIAN = "коричневая собака бежит по зелёной траве"  # words the bundled MiniLM reads letter by letter
LONG = "a dog on a beach " * 100  # past the MiniLM tower's 256 tokens


class _Counting:
    """A `tokenizers.Tokenizer` stand-in that counts the texts it encodes (the Rust object takes no attributes)."""

    def __init__(self, tok) -> None:
        self._tok, self.texts = tok, 0

    def encode(self, text, *args, **kwargs):
        self.texts += 1
        return self._tok.encode(text, *args, **kwargs)

    def encode_batch(self, texts, *args, **kwargs):
        self.texts += len(texts)
        return self._tok.encode_batch(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


@contextmanager
def _counted(model):
    fast = model.text_tower._fast
    tok, fast.tok = fast.tok, _Counting(fast.tok)
    try:
        yield fast.tok
    finally:
        fast.tok = tok


def test_embed_tokenizes_each_text_once_with_the_same_notes(lite, db):
    with TestClient(create_app(lite, db)) as client, _counted(lite) as counting:
        r = client.post("/v1/embed", json={"texts": ["a dog", LONG, RUSSIAN, LONG]})
        assert r.status_code == 200, r.text
        assert counting.texts == 4  # the model's pass; the notes tokenized all 4 twice more before
        warnings = r.json()["warnings"]
        assert warnings[0] == ("texts[1], texts[3] reached the text tower's limit of 256 tokens and were cut there: "
                               "later words do not count; send shorter texts")
        assert len(warnings) == 2 and warnings[1].startswith("texts[2]: 6 of the query's 6 words are not in the")
        vectors = np.array(r.json()["vectors"], np.float32)
    np.testing.assert_allclose(vectors, lite.encode_text(["a dog", LONG, RUSSIAN, LONG]), atol=1e-5)


def test_search_tokenizes_its_query_once_with_the_same_notes(lite, db):
    with TestClient(create_app(lite, db)) as client, _counted(lite) as counting:
        r = client.post("/v1/search", json={"text": LONG, "k": 1})
        assert r.status_code == 200 and counting.texts == 1
        assert r.json()["warnings"][0].startswith("the query reached the text tower's limit of 256 tokens")
        r = client.post("/v1/search", json={"text": RUSSIAN, "k": 1})
        assert counting.texts == 2 and "6 of the query's 6 words are not in" in r.json()["warnings"][0]
        assert client.post("/v1/search", json={"text": "a dog", "k": 1}).json()["warnings"] == []


def test_merged_requests_each_get_their_own_encodings():
    import asyncio
    import threading

    from polymodal.data.token_record import record_encodings
    from polymodal.serve.batching import MicroBatcher

    class Model:  # records each text's "encoding" as a real text tower does while it embeds
        def encode_text(self, texts, batch_size=None):
            record_encodings(texts, [f"enc:{t}" for t in texts])
            return np.zeros((len(texts), 2), np.float32)

    batcher = MicroBatcher(Model(), max_batch=8, max_wait_ms=0)
    gate = threading.Event()

    async def both():
        batcher.submit_call(gate.wait)  # the model thread is busy while both requests queue: one batch takes both
        first = asyncio.ensure_future(batcher.texts_encoded(["a", "b"]))
        second = asyncio.ensure_future(batcher.texts_encoded(["b", "c"]))
        await asyncio.sleep(0.01)
        gate.set()
        return await first, await second

    try:
        (_, first), (_, second) = asyncio.run(both())
    finally:
        gate.set()
        batcher.close()
    assert batcher.forward_calls == 1 and first == ["enc:a", "enc:b"] and second == ["enc:b", "enc:c"]


def test_without_a_kept_encoding_the_notes_tokenize_as_before(lite):
    from polymodal.data.tokenizer import cut_texts, texts_notes

    assert cut_texts(lite, ["a dog", LONG], [None, None]) == ([1], 256)  # (a slow tokenizer keeps none)
    assert texts_notes(lite, [RUSSIAN])[0].startswith("texts[0]: 6 of the query's 6 words")


def test_the_benchmark_gives_the_same_replies_both_ways(tmp_path, capsys):
    import json

    from conftest import benchmark_module

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"caption": c}) + "\n" for c in ["a dog", "a red car", RUSSIAN, "two cats"]))
    assert benchmark_module("serve_text_notes", "s56").main(["--pairs", str(pairs), "--texts", "2", "--requests", "2",
                                                             "--repeats", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    summary = [row for row in lines if "ratio" in row]
    assert len(summary) == 4 and all(row["same_replies"] and row["median"] > 0 for row in summary)
