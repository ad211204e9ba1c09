"""Review s43 of `polymodal export onnx`: an --out folder of the user's own ONNX models is not taken for an earlier
export (and replaced), a variant named twice cannot delete the graph it serves, an unreadable validation photo is
left out as `eval retrieval` leaves it out, and bare CLIP vocab/merges load as a fast tokenizer (which transformers
4's CLIPTokenizer is not: the export could not save it)."""

from __future__ import annotations

import itertools
import json
import logging
import types

import pytest

pytest.importorskip("onnxruntime")

import polymodal  # noqa: E402
from polymodal import cli  # noqa: E402


@pytest.mark.parametrize("files", [["yolov8n.onnx"], ["head.onnx"], ["text.fp32.onnx", "report.md"]])
def test_an_out_folder_of_other_onnx_models_is_refused_not_replaced(tmp_path, capsys, files):
    out = tmp_path / "models"
    out.mkdir()
    for name in files:
        (out / name).write_bytes(b"someone else's model")
    assert cli.main(["export", "onnx", "lite", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a polymodal export" in err and files[0] in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted(files)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from conftest import skip_unless_clip_exports
    from test_clip_checkpoints import make_tiny_clip

    skip_unless_clip_exports()
    return make_tiny_clip(tmp_path_factory.mktemp("s43") / "tiny-clip")


def test_a_variant_named_twice_is_tried_once_and_the_export_loads(tiny_clip, tmp_path, monkeypatch):
    import polymodal.export.onnx_export as E

    verdicts = itertools.cycle([("kept", "faster"), ("rejected", "slower")])  # timing noise: kept, then not
    monkeypatch.setattr(E, "gate", lambda *a, **k: next(verdicts))
    out = tmp_path / "onnx"
    report = E.export_onnx(polymodal.load(str(tiny_clip)), out, E.validation_set(None),
                           variants=["int8_dynamic", "int8_dynamic"], timing_seconds=0.01)
    assert [(t["tower"], t["variant"]) for t in report["tries"]] == [
        ("image", "fp32"), ("image", "int8_dynamic"), ("text", "fp32"), ("text", "int8_dynamic")]
    polymodal.load(out).encode_text(["a cat"])  # the second try deleted the graph the first one's keep served


def test_an_unreadable_validation_photo_is_left_out_not_the_end_of_the_export(tiny_clip, gallery, tmp_path, caplog):
    from polymodal.export.onnx_export import export_onnx, validation_set

    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    photos = sorted(gallery.glob("*.jpg"))[:3]
    rows = [{"image": str(tmp_path / "broken.jpg"), "caption": "a broken photo"}]
    rows += [{"image": str(p), "caption": f"a photo of {p.stem}"} for p in photos]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        report = export_onnx(polymodal.load(str(tiny_clip)), tmp_path / "onnx", validation_set(pairs, warn_few=False),
                             variants=[], timing_seconds=0.01)
    assert "1 unreadable validation photo" in caplog.text and "broken.jpg" in caplog.text
    assert report["validation"].endswith("1 unreadable left out")
    assert polymodal.load(tmp_path / "onnx").dim == 32


def test_bare_clip_vocab_and_merges_load_as_a_fast_tokenizer(tiny_clip, monkeypatch):
    import transformers

    from polymodal.models.clip import load_tokenizer

    class Slow:  # transformers 4's CLIPTokenizer: the pure-Python one, which has no tokenizer.json to save
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return types.SimpleNamespace(is_fast=False)

    monkeypatch.setattr(transformers, "CLIPTokenizer", Slow, raising=False)
    tok = load_tokenizer(tiny_clip.parent / "bare-tokenizer")  # vocab.json + merges.txt, as beside OpenAI .pt files
    assert tok.is_fast and tok("a cat")["input_ids"][0] == tok.bos_token_id


def test_val_qa_and_val_pairs_together_are_refused(tmp_path, capsys):
    """--val-pairs beside --val-qa was ignored without a word (the VQA path took --val-qa)."""
    from polymodal.cli import main

    (tmp_path / "qa.jsonl").write_text("")
    (tmp_path / "pairs.jsonl").write_text("")
    code = main(["export", "onnx", "easy-vqa", "--out", str(tmp_path / "x"), "--val-qa", str(tmp_path / "qa.jsonl"),
                 "--val-pairs", str(tmp_path / "pairs.jsonl")])
    assert code == 2 and "not both" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
