"""Token-state caches (VQA question states, pretraining caption states) are written to the cache file a batch at a
time: the whole array and every batch's states were held in memory first (1.8x the file at the peak; ~18 GB for
440,000 questions). The files hold what encoding each text alone gives, as they did."""

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from polymodal.train import pretrain, vqa

DIM = 64


def _states(keys: list[list[int]]) -> torch.Tensor:
    """[B, longest, DIM] float32: token t of a text whose keys are k gets k[t] / 7 + (0..DIM-1) / DIM; zeros past it."""
    width = max(map(len, keys))
    out = torch.zeros(len(keys), width, DIM)
    for j, row in enumerate(keys):
        out[j, : len(row)] = torch.tensor(row, dtype=torch.float32)[:, None] / 7 + torch.arange(DIM) / DIM
    return out


class _Questions:
    """text_cache_input whose states depend on the question alone (batch-independent, as a frozen tower is)."""

    text_cache_signature = "s56-tokcache-questions"

    def __init__(self, fail_at: int | None = None) -> None:
        self.batches, self.fail_at = 0, fail_at

    def text_cache_input(self, texts):
        self.batches += 1
        if self.batches == self.fail_at:
            raise KeyboardInterrupt
        keys = [[ord(c) % 50 for c in t] for t in texts]
        states = _states(keys)
        return states, torch.arange(states.shape[1])[None, :] < torch.tensor([len(k) for k in keys])[:, None]


def _questions(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [f"q{i} " + "is it" * int(rng.integers(1, 8)) + "?" for i in range(n)]


def _alone(encode, texts: list) -> np.ndarray:
    """Each text encoded alone, padded to the longest: what the cache holds."""
    rows = [encode(t) for t in texts]
    out = np.zeros((len(rows), max(r.shape[0] for r in rows), DIM), np.float16)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _peak(call):
    tracemalloc.start()
    try:
        out = call()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def features(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    return tmp_path / "features"


def test_question_states_are_written_a_batch_at_a_time_and_hold_each_questions_own(features):
    questions = _questions(800)
    (states, lengths), peak = _peak(lambda: vqa.question_features(_Questions(), questions, batch_size=16,
                                                                  progress=False))
    want = _alone(lambda q: _Questions().text_cache_input([q])[0][0].numpy(), questions)
    assert peak < want.nbytes / 4  # a batch or so: the array (4 MB here) was held whole, and each batch besides
    assert isinstance(states, np.memmap) and states.dtype == np.float16 and np.array_equal(states, want)
    assert lengths.tolist() == [len(q) for q in questions]
    (file,) = features.glob("vqa-text-*.npy")
    assert np.array_equal(np.load(file), want) and not list(features.glob(".*"))  # no temporary left behind
    again = vqa.question_features(_Questions(fail_at=1), questions, batch_size=16, progress=False)  # cached
    assert np.array_equal(again[0], want)


def test_a_wider_batch_later_widens_the_file_and_an_interrupt_leaves_none(tmp_path):
    questions = _questions(300)
    path = tmp_path / "vqa-text-x.npy"
    states, _ = vqa._question_states(_Questions(), questions, 8, by_length=False, path=path)  # widest batch not first
    want = _alone(lambda q: _Questions().text_cache_input([q])[0][0].numpy(), questions)
    assert np.array_equal(states, want) and np.array_equal(np.load(path), want)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(KeyboardInterrupt):
        vqa._question_states(_Questions(fail_at=5), questions, 8, path=tmp_path / "vqa-text-y.npy")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


class _Captions:
    """FusionEncoder's part that caption_features uses: a tokenizer (a letter a piece; it notes how many texts each
    call gets) and text_states whose states depend on each caption's ids alone."""

    text_cache_signature = "s56-tokcache-captions"
    config = SimpleNamespace(max_question_tokens=32)

    def __init__(self) -> None:
        self.calls = []
        self.text_tower = SimpleNamespace(dim=DIM, tokenizer=self.tokenize)

    def tokenize(self, texts, **kw):
        self.calls.append(len(texts))
        return {"input_ids": [[101, *(ord(c) for c in t)][:31] + [102] for t in texts]}

    def text_states(self, ids, attn):
        return _states([row[: int(n)].tolist() for row, n in zip(ids, attn.sum(1))])


def test_caption_states_are_written_a_batch_at_a_time_and_hold_each_captions_own(features):
    captions = _questions(800)
    model = _Captions()
    (states, lengths), peak = _peak(lambda: pretrain.caption_features(model, captions, progress=False))
    ids = pretrain.tokenize_captions(model, captions)
    want = _alone(lambda row: _states([row])[0].numpy(), ids)
    assert peak < want.nbytes / 4
    assert isinstance(states, np.memmap) and np.array_equal(states, want) and lengths.tolist() == list(map(len, ids))
    (file,) = features.glob("pretrain-text-*.npy")
    assert np.array_equal(np.load(file), want)


def test_whole_lists_are_tokenized_a_chunk_at_a_time(monkeypatch, caplog):
    """Counting tokens to order batches by length, and a pretraining run's captions: every text's encoding at once
    was ~1.9 GB for 440,000 questions. The same counts, ids and cut warning as at once."""
    from polymodal.data import tokenizer
    from polymodal.encoders.text import minilm_path

    texts = _questions(50) + ["a very long question " * 10]
    fast = tokenizer.FastTokenizer.from_model_folder(minilm_path(), 32)
    whole = [sum(e.attention_mask) for e in fast.tok.encode_batch(texts)]
    monkeypatch.setattr(tokenizer, "TOKENIZE_CHUNK", 8)
    sizes, encode = [], fast.tok.encode_batch
    fast.tok = SimpleNamespace(encode_batch=lambda chunk: sizes.append(len(chunk)) or encode(chunk))
    assert fast.counts(texts) == whole and max(sizes) == 8 and sum(sizes) == len(texts)

    monkeypatch.setattr(pretrain, "TOKENIZE_CHUNK", 8)
    model = _Captions()
    ids = pretrain.tokenize_captions(model, texts)
    whole = model.tokenize(texts)["input_ids"]
    assert ids == whole and max(model.calls[:-1]) == 8 and sum(model.calls[:-1]) == len(texts)
    assert f"({sum(len(row) == 32 for row in whole)} in this batch)" in caplog.text  # all chunks' cut ones, once
