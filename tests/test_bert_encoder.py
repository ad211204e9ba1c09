"""polymodal.encoders.bert computes what transformers' BertModel computes, on the real MiniLM weights."""

import json
import shutil

import pytest
import torch

from polymodal.encoders import bert
from polymodal.encoders.text import SentenceEncoder, minilm_path

TEXTS = ["a dog runs on the beach", "two people", "a red double-decker bus parked beside a brick building at night"]


@pytest.fixture(scope="module")
def towers():
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_path()
    ours = SentenceEncoder(folder)
    theirs = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    return ours, theirs, AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def test_the_bundled_tower_uses_the_plain_torch_bert(towers):
    ours, theirs, _ = towers
    assert isinstance(ours.model, bert.BertModel)
    hf = {k for k in theirs.state_dict() if not k.endswith(("position_ids", "token_type_ids"))}
    assert set(ours.model.state_dict()) == hf  # same names: fine-tuned layers save and load under the same keys


def test_hidden_states_match_transformers_with_padding_and_token_types(towers):
    ours, theirs, tok = towers
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the short texts are padded: the mask is exercised
    types = torch.zeros_like(batch["input_ids"])
    types[:, 3:] = 1
    with torch.no_grad():
        for kwargs in ({}, {"token_type_ids": types}):
            a = ours.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
            b = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
            real = batch["attention_mask"].bool()
            torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], atol=2e-5, rtol=1e-4)


def test_mean_pooled_sentences_match_transformers(towers):
    ours, theirs, tok = towers
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = theirs(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (states * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(ours(TEXTS), expected, atol=2e-5, rtol=1e-4)


def test_training_mode_has_dropout_and_gradients(towers):
    ours, _, tok = towers
    model = bert.BertModel(ours.model.config)
    model.load_state_dict(ours.model.state_dict())
    batch = tok(TEXTS[:2], padding=True, return_tensors="pt")
    model.train()
    a = model(**batch).last_hidden_state
    b = model(**batch).last_hidden_state
    assert not torch.allclose(a, b)  # dropout 0.1 as in BERT fine-tuning
    a.sum().backward()
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, model(**batch).last_hidden_state)


@pytest.mark.parametrize("change", [{"hidden_act": "relu"}, {"position_embedding_type": "relative_key"},
                                    {"model_type": "roberta"}, {"is_decoder": True}])
def test_other_architectures_are_not_claimed(change):
    raw = json.loads((minilm_path() / "config.json").read_text())
    assert bert.supports(raw)
    assert not bert.supports({**raw, **change})


def test_an_unsupported_folder_falls_back_to_transformers(tmp_path):
    from transformers import BertConfig, BertModel

    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, tmp_path / name)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, hidden_act="relu")).save_pretrained(tmp_path)
    encoder = SentenceEncoder(tmp_path)
    assert not isinstance(encoder.model, bert.BertModel)
    assert encoder(["a cat"]).shape == (1, 32)


ODD_TEXTS = ["", "   ", "Hello, World!", "Café crème brûlée", "naïve résumé", "北京 is a city", "emoji 🐶 dog",
             "UPPER lower MiXeD", "tabs\tand\nnewlines", "a " * 400, "don't stop-believing (1999) #42 @home",
             "ﬁne ligature", "Ελληνικά και русский"]


def test_the_fast_tokenizer_makes_the_transformers_ids(towers):
    ours, _, tok = towers
    got = ours.tokenize(TEXTS + ODD_TEXTS)
    want = tok(TEXTS + ODD_TEXTS, padding=True, truncation=True, max_length=ours.max_length, return_tensors="pt")
    assert got["input_ids"].shape[1] == ours.max_length  # the long text is truncated to the tower's limit
    assert torch.equal(got["input_ids"], want["input_ids"])
    assert torch.equal(got["attention_mask"], want["attention_mask"])
    assert got["input_ids"].dtype == torch.int64


def test_embedding_a_text_imports_no_transformers():
    import subprocess
    import sys

    code = ("import sys, polymodal\n"
            "m = polymodal.load('lite')\n"
            "m.encode_text(['a dog on the beach'])\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'transformers'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out  # importing transformers costs ~3 s of every CLI call (benchmarks/text_tower.py)
