"""Review of the heat maps and the text search apps (helper session 41): the text bank cache tells a checkpoint's
tokenizers apart, and a heat map path that cannot be written is refused before any model work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import polymodal
from polymodal import cli, cli_vqa
from polymodal.apps.text_search import text_embeddings
from polymodal.models.openai_convert import hf_to_openai
from test_clip_checkpoints import _write_tokenizer_files, make_tiny_clip

TEXTS = ["a cat", "a dog photo", "cat dog"]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A tiny OpenAI-layout CLIP file and two tokenizer folders: A and B (the same files, "cat" and "dog" swapped)."""
    from transformers import CLIPModel

    root = tmp_path_factory.mktemp("s41-clip")
    hf = make_tiny_clip(root / "hf")
    (root / "ck").mkdir()
    torch.save(hf_to_openai(CLIPModel.from_pretrained(hf).state_dict()), root / "ck" / "tiny.pt")
    _write_tokenizer_files(root / "tok-a")
    _write_tokenizer_files(root / "tok-b")
    # other ids, other vectors (not a merges.txt emptied: that is refused as cut short, s44)
    vocab = json.loads((root / "tok-b" / "vocab.json").read_text())
    vocab["cat</w>"], vocab["dog</w>"] = vocab["dog</w>"], vocab["cat</w>"]
    (root / "tok-b" / "vocab.json").write_text(json.dumps(vocab))
    return root / "ck" / "tiny.pt", root / "tok-a", root / "tok-b"


def test_the_text_bank_is_not_shared_by_one_checkpoint_loaded_with_two_tokenizers(clip_file):
    file, tok_a, tok_b = clip_file
    a = polymodal.load(str(file), tokenizer=str(tok_a))
    b = polymodal.load(str(file), tokenizer=str(tok_b))
    assert a.key == b.key  # the model key (and so indexes) stays the checkpoint's
    fresh_b = b.encode_text(TEXTS)
    assert np.abs(a.encode_text(TEXTS) - fresh_b).max() > 0.05  # the tokenizers really embed differently
    text_embeddings(a, TEXTS)  # caches A's vectors
    np.testing.assert_allclose(text_embeddings(b, TEXTS), fresh_b, atol=2e-3)  # B's own, not A's from the cache
    from polymodal.apps.text_search import _tokenizer_spec_digest

    signature = _tokenizer_spec_digest(b)  # (not text_signature: it keeps the digest on the model, s42)
    b.encode_text(["a much longer caption than any before it"])  # leaves padding/truncation state behind
    assert _tokenizer_spec_digest(b) == signature  # the digest does not drift after a call: the cache is still hit


def test_the_lite_towers_keep_their_text_bank_key(lite):
    from polymodal.apps.text_search import text_signature

    # their text tower is built in (the key covers it): no tokenizer digest, so caches made before stay valid and
    # no transformers import is needed to key them
    assert text_signature(lite) == (f"{type(lite).__module__}.{type(lite).__name__}",)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model is a test failure: the mistake must be caught before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(polymodal, "load", refuse)


def _bad_paths(tmp_path):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "file").write_text("x")
    return [(tmp_path / "folder.png", "it is a folder"), (tmp_path / "file" / "why.png", "is a file, not a folder"),
            (tmp_path / "file" / "sub" / "why.png", "is a file, not a folder"), ("", "cannot write a heat map as ''")]


def test_search_refuses_a_heat_map_path_it_cannot_write_before_loading_the_model(tmp_path, no_model, capsys):
    (tmp_path / "db").mkdir()
    texts = tmp_path / "t.txt"
    texts.write_text("a cat\n")
    image = tmp_path / "q.png"
    Image.new("RGB", (8, 8)).save(image)
    for out, message in _bad_paths(tmp_path):
        for where in (["--db", str(tmp_path / "db"), "a cat"], ["--texts", str(texts), "--image", str(image)]):
            assert cli.main(["search", *where, "--explain", str(out)]) == 2
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "file", "folder.png", "q.png", "t.txt"]  # no leftovers


def test_vqa_refuses_a_heat_map_path_it_cannot_write_before_loading_the_model(tmp_path, no_model, capsys):
    image = tmp_path / "q.png"
    Image.new("RGB", (8, 8)).save(image)
    for out, message in _bad_paths(tmp_path):
        assert cli.main(["vqa", str(image), "what is it?", "--model", "easy-vqa", "--explain", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_vqa_explain_on_the_onnx_runtime_is_refused_before_answering(tmp_path, monkeypatch, capsys):
    class OnnxLike:  # answers, but draws no heat map
        def answer(self, *args, **kwargs):
            raise AssertionError("answered before refusing --explain")

    monkeypatch.setattr(cli_vqa, "_load_vqa_model", lambda name, runtime, precision="fp32": OnnxLike())
    image = tmp_path / "q.png"
    Image.new("RGB", (8, 8)).save(image)
    assert cli.main(["vqa", str(image), "what is it?", "--model", "x", "--explain", str(tmp_path / "h.png")]) == 2
    assert "has no explain(): drop --explain" in capsys.readouterr().err


def test_a_text_file_that_is_not_utf8_names_the_line(tmp_path):
    from polymodal.apps.text_search import read_text_lines
    from polymodal.errors import PolymodalError

    lines = [f"caption {i}" for i in range(50)]
    lines[41] = "un caf\u00e9 au lait"
    path = tmp_path / "latin1.txt"
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(PolymodalError, match=r"line 42 is not UTF-8 \(byte 0xe9\); save it as UTF-8"):
        read_text_lines(path)


def test_the_tokenizer_digest_is_kept_until_the_tokenizer_changes(clip_file, monkeypatch):
    """s42: the tokenizer digest in the text-bank key is computed once per model and tokenizer (it cost ~50 ms a
    search), and a tokenizer swapped in afterwards still changes the key."""
    from polymodal.apps import text_search

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
