"""What a review of captioning found (stop 37): [UNK] and [MASK] written (and decoded differently by the two
runtimes), captions cut to nothing by --max-caption-tokens 2, a silent validation pass, and two messages."""

import numpy as np
import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.models.beam_search import CLS, SEP, beam_search
from polymodal.models.captioner import CaptionerConfig
from test_caption_audit import _table_step
import test_captioner

fresh = test_captioner.fresh

UNK, MASK = 100, 103


def test_unknown_and_mask_pieces_are_never_written():
    likes_specials = {CLS: {UNK: 0.5, MASK: 0.3, 7: 0.1}, UNK: {SEP: 0.9}, MASK: {SEP: 0.9}, 7: {UNK: 0.6, SEP: 0.3}}
    assert beam_search(_table_step([likes_specials]), 1, 3, 5) == [[7]]  # not [UNK], the likeliest caption


@pytest.mark.parametrize("tokens", [1, 2])
def test_caption_limits_that_leave_no_word_are_refused(tokens):
    with pytest.raises(PolymodalError, match="max_caption_tokens must be at least 3"):
        CaptionerConfig(max_caption_tokens=tokens).validate()
    CaptionerConfig(max_caption_tokens=3).validate()


def test_validation_shows_a_bar_when_asked(fresh, capsys):
    from polymodal.data.pairs import Pair, PairSet
    from polymodal.train import captioning

    grids = np.random.default_rng(0).standard_normal((3, 49, 1280)).astype(np.float32)
    pairs = PairSet.from_pairs([Pair(f"p{i}.png", f"a photo number {i}") for i in range(3)])
    with torch.no_grad():
        quiet = captioning.caption_eval(fresh, pairs, grids, limit=3, batch_size=2)
        assert "validating" not in capsys.readouterr().err
        shown = captioning.caption_eval(fresh, pairs, grids, limit=3, batch_size=2, progress=True)
    assert "validating" in capsys.readouterr().err and shown == quiet


def test_eval_captions_refuses_a_bad_limit_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import polymodal.cli_caption as cli_caption
    from polymodal import cli

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"image": "a.png", "caption": "a cat"}\n')
    monkeypatch.setattr(cli_caption, "load_captioner_model", lambda *a: pytest.fail("the model loaded"))
    assert cli.main(["eval", "captions", "--pairs", str(pairs), "--limit", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--limit must be at least 1, got -1" in err and "evaluated photos" not in err


def test_a_captioner_export_with_few_pairs_is_not_warned_of_an_r_at_5_gate(tmp_path, caplog, monkeypatch):
    import logging

    import polymodal
    from polymodal import cli

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(f'{{"image": "{i}.png", "caption": "a cat {i}"}}\n' for i in range(6)))
    for i in range(6):
        from PIL import Image

        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")

    class Stop(Exception):
        pass

    def stop(*a, **kw):
        raise Stop

    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: type("C", (), {"caption": lambda self: None})())
    import polymodal.cli_export as cli_export

    monkeypatch.setattr(cli_export, "_export_captioner", stop)
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
        cli.main(["export", "onnx", "captioner", "--out", str(tmp_path / "out"), "--val-pairs", str(pairs)])
    assert "R@5" not in caplog.text


@pytest.mark.parametrize("caption,ptb", [  # what pycocoevalcap's PTBTokenizer (Java) wrote for each
    ("A dog's T-shirt, (red).", "a dog 's t-shirt -lrb- red -rrb-"),
    ("Don't stop! 3.5 kids & 1,000 dogs...", "do n't stop 3.5 kids & 1,000 dogs"),
    ("They're 2:30 pm; it's w/ a man/woman", "they 're 2:30 pm it 's w / a man/woman"),
    ('A "quoted" word -- dash - x', "a quoted word dash x"),
    ("I'm, we've, you'll, he'd", "i 'm we 've you 'll he 'd"),
    ("Cross-country skiers at water's edge", "cross-country skiers at water 's edge"),
    ("The man doesn’t smile at a “café”.", "the man does n't smile at a café"),  # curly quotes, a letter past ASCII
    ("A jalapeño pizza, a dog,cat.", "a jalapeño pizza a dog cat"),
    ("It's 5 o'clock. He cannot swim.", "it 's 5 o'clock he can not swim"),
    ("Poke\u0301mon cards \u2014 a test\u2026 \u00abnew\u00bb", "poke\u0301mon cards a test new"),  # a combining mark
])
def test_captions_are_compared_as_the_coco_evaluations_ptb_tokenizer_leaves_them(caption, ptb):
    from polymodal.eval.captions import caption_tokens

    assert caption_tokens(caption) == ptb
