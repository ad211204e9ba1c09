"""The captioner: prefix-LM masking, LoRA adapters, decoding, saving, training, metrics and the CLI."""

import json

import pytest
import torch
from PIL import Image

from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.eval.captions import caption_scores, caption_tokens
from polymodal.models.beam_search import repeats
from polymodal.models.captioner import Captioner, CaptionerConfig, load_captioner
from polymodal.models.lora import LoRALinear

CAPTIONS = {"red": "a red square on a white wall", "blue": "two blue circles in the grass"}


@pytest.fixture(scope="module")
def fresh():
    torch.manual_seed(0)
    return Captioner(CaptionerConfig()).eval()


def _photo(colour: str) -> Image.Image:
    img = Image.new("RGB", (96, 96), "white")
    if colour == "red":
        img.paste((220, 20, 20), (20, 20, 76, 76))
    else:
        for x in (10, 55):
            img.paste((20, 40, 220), (x, 30, x + 30, 60))
    return img


@pytest.fixture(scope="module")
def fitted():
    """A captioner overfit to two synthetic photos, each with its own caption. It writes both (beam 1 and 3) from
    about step 10 (loss 0.11; 0.03 at step 20), so 20 steps leave it twice the steps it needs (60 took 3x longer)."""
    torch.manual_seed(0)
    model = Captioner(CaptionerConfig(dropout=0.0))
    grids = model.encode_images([_photo("red"), _photo("blue")])
    ids, mask = model.tokenize([CAPTIONS["red"], CAPTIONS["blue"]])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    model.train()
    for _ in range(20):
        opt.zero_grad()
        model.loss(grids, ids, mask).backward()
        opt.step()
    return model.eval()


def test_words_see_the_photo_and_earlier_words_only(fresh):
    grid = torch.randn(2, 49, 1280)
    ids, mask = fresh.tokenize(["a dog runs on the beach", "a dog runs on the grass"])
    with torch.no_grad():
        states = fresh.hidden(fresh.prefix(grid[:1].expand(2, -1, -1)), ids, mask)
        other_photo = fresh.hidden(fresh.prefix(grid[1:].expand(2, -1, -1)), ids, mask)
    differs = (states[0] - states[1]).abs().amax(-1)
    first_diff = int(torch.nonzero(ids[0] != ids[1])[0])
    assert differs[:first_diff].max() < 1e-5  # a later word never changes an earlier word's state
    assert differs[first_diff] > 1e-3
    assert (states - other_photo).abs().amax() > 1e-3  # the photo reaches every word


def test_padding_does_not_change_the_words(fresh):
    grid = torch.randn(1, 49, 1280)
    ids, mask = fresh.tokenize(["a dog", "a much longer caption about a dog on a beach"])
    with torch.no_grad():
        padded = fresh.hidden(fresh.prefix(grid.expand(2, -1, -1)), ids, mask)[0, : int(mask[0].sum())]
        alone_ids, alone_mask = fresh.tokenize(["a dog"])
        alone = fresh.hidden(fresh.prefix(grid), alone_ids, alone_mask)[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_lora_starts_as_the_pretrained_layer_and_only_adapters_train(fresh):
    base = torch.nn.Linear(8, 4)
    adapted = LoRALinear(base, rank=2, alpha=4.0)
    x = torch.randn(3, 8)
    torch.testing.assert_close(adapted(x), base(x))
    with torch.no_grad():
        adapted.lora_b.fill_(0.1)
    assert (adapted(x) - base(x)).abs().max() > 1e-3
    assert not base.weight.requires_grad
    trained = fresh.trained_state()
    assert not any(k.startswith("image_tower.") or k.endswith("base.weight") or "word_embeddings" in k for k in trained)
    assert any("lora_a" in k for k in trained) and "lm_bias" in trained
    assert sum(v.numel() for v in trained.values()) < 3_000_000  # a few MB saved, not MiniLM's 22M


def test_an_overfit_captioner_writes_each_photos_caption(fitted):
    assert fitted.caption([_photo("red"), _photo("blue")], beam=1) == [CAPTIONS["red"], CAPTIONS["blue"]]
    assert fitted.caption(_photo("blue"), beam=3) == [CAPTIONS["blue"]]


def _logprob(model, grid, pieces):
    ids = torch.tensor([[101, *pieces, 102]])
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(model.hidden(model.prefix(grid), ids[:, :-1], torch.ones_like(ids[:, :-1],
                                                                                                           dtype=torch.bool))), -1)
    return float(logp[0, torch.arange(ids.shape[1] - 1), ids[0, 1:]].sum())


def test_beam_search_finds_a_caption_at_least_as_likely_as_greedy(fresh):
    grid = torch.randn(3, 49, 1280)
    greedy = fresh.generate(grid, beam=1, max_tokens=6, length_penalty=0.0, no_repeat=0)
    beam = fresh.generate(grid, beam=4, max_tokens=6, length_penalty=0.0, no_repeat=0)
    for i in range(3):
        if len(greedy[i]) < 6 and len(beam[i]) < 6:  # both ended with [SEP]: compare whole captions
            assert _logprob(fresh, grid[i : i + 1], beam[i]) >= _logprob(fresh, grid[i : i + 1], greedy[i]) - 1e-4


def test_cached_decoding_matches_running_the_whole_sequence(fresh):
    """generate() keeps keys and values between steps; use_cache=False reruns [prefix ; words] every step."""
    grid = torch.randn(3, 49, 1280)
    ids = torch.full((3, 1), 101)
    with torch.no_grad():  # greedy by hand from the full sequence: the reference for both
        for _ in range(5):
            logits = fresh.logits(fresh.hidden(fresh.prefix(grid), ids, torch.ones_like(ids, dtype=torch.bool))[:, -1])
            logits[:, [0, 101]] = float("-inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    by_hand = [[t for t in row if t != 102][:5] for row in ids[:, 1:].tolist()]
    cached = fresh.generate(grid, beam=1, max_tokens=5, no_repeat=0)
    assert [row[: len(c)] for row, c in zip(by_hand, cached)] == cached and sum(map(len, cached)) > 5
    assert fresh.generate(grid, beam=3, max_tokens=8) == fresh.generate(grid, beam=3, max_tokens=8, use_cache=False)


def test_repeats_names_the_pieces_that_would_repeat_an_ngram_or_the_last_piece():
    assert repeats([[101, 1, 2, 3, 1, 2]], 3) == [[2, 3]]  # "1 2 3" again, or "2" twice in a row
    assert repeats([[101, 1, 2, 1]], 2) == [[1, 2]]
    assert repeats([[101], [101, 5], [101, 7, 7]], 0) == [[], [5], [7]]


def _ngrams(seq, n):
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def test_beam_search_without_repeats(fresh):
    """A decoder that favours three pieces loops over them; with no_repeat=3 no 3-gram and no piece twice in a row
    survive."""
    import copy

    looping = copy.deepcopy(fresh)
    with torch.no_grad():
        looping.lm_bias[[1037, 3899, 2003]] += 30.0  # "a", "dog", "is"
    grid = torch.randn(4, 49, 1280)
    loose = looping.generate(grid, beam=3, max_tokens=16, no_repeat=0)
    assert any(len(set(_ngrams(c, 3))) < len(_ngrams(c, 3)) or len(set(_ngrams(c, 1))) < len(c) for c in loose)
    for c in looping.generate(grid, beam=3, max_tokens=16, no_repeat=3):
        assert len(set(_ngrams(c, 3))) == len(_ngrams(c, 3)) and all(a != b for a, b in zip(c, c[1:]))
    with pytest.raises(PolymodalError, match="no_repeat"):
        fresh.caption(_photo("red"), no_repeat=1)


@pytest.mark.parametrize("option, match", [
    ({"batch_size": -3}, "batch_size must be a whole number"),  # once returned [] without a word
    ({"batch_size": 0}, "batch_size must be a whole number"),
    ({"beam": 21}, "beam must be at most 20"),  # beam 1000 took 2.9 GB for one photo
    ({"max_tokens": 513}, "max_tokens must be at most 512"),  # past the position table: an IndexError
])
def test_caption_refuses_decoding_options_it_cannot_honour(fresh, option, match):
    with pytest.raises(PolymodalError, match=match):
        fresh.caption(_photo("red"), **option)


def test_evaluation_names_a_bad_option_before_captioning_anything(fresh, tmp_path, monkeypatch):
    from polymodal.data.pairs import read_pair_source
    from polymodal.eval.captions import evaluate_captions

    pairs = read_pair_source(_pairs(tmp_path))
    calls = []
    monkeypatch.setattr(fresh, "caption", lambda *a, **k: calls.append(1) or [])
    for option, match in (({"beam": 0}, "beam must be"), ({"no_repeat": 1}, "no_repeat must be"),
                          ({"batch_size": -1}, "batch_size must be"), ({"examples": -1}, "examples must be")):
        with pytest.raises(PolymodalError, match=match):  # not "none of the photos could be read"
            evaluate_captions(fresh, pairs, progress=False, **option)
    assert calls == []


def test_cider_needs_two_photos():
    """CIDEr-D weighs words by how few photos they describe: over one photo every weight is 0, so it is None."""
    one = caption_scores([["a red square on a wall"]], ["a red square on a wall"])
    assert one["cider"] is None and one["bleu1"] == pytest.approx(1.0)
    assert caption_scores([["a red square"], ["two blue circles"]], ["a red square", "two blue circles"])["cider"] > 1


def test_cli_no_repeat_flag(fresh, tmp_path, capsys):
    """`caption --no-repeat 0` lets the looping decoder repeat itself; the default does not."""
    import copy

    looping = copy.deepcopy(fresh)
    with torch.no_grad():
        looping.lm_bias[[1037, 3899, 2003]] += 30.0  # "a", "dog", "is"
    looping.save(tmp_path / "loop")
    _photo("red").save(tmp_path / "red.png")
    words = {}
    for flag in ([], ["--no-repeat", "0"]):
        assert main(["caption", str(tmp_path / "red.png"), "--model", str(tmp_path / "loop"), "--max-tokens", "8",
                     *flag]) == 0
        words[bool(flag)] = capsys.readouterr().out.split()
    assert any(a == b for a, b in zip(words[True], words[True][1:]))
    assert not any(a == b for a, b in zip(words[False], words[False][1:]))
    assert main(["caption", str(tmp_path / "red.png"), "--no-repeat", "1"]) == 2
    assert "--no-repeat must be 0" in capsys.readouterr().err


def test_saved_captioner_loads_and_writes_the_same_captions(fitted, tmp_path):
    import polymodal

    fitted.save(tmp_path / "cap")
    config = json.loads((tmp_path / "cap" / "config.json").read_text())
    assert config["type"] == "captioner" and config["version"] == fitted.version
    again = polymodal.load(str(tmp_path / "cap"))
    assert isinstance(again, Captioner)
    assert again.caption([_photo("red"), _photo("blue")], beam=1) == [CAPTIONS["red"], CAPTIONS["blue"]]
    config["lora_rank"] = 8  # edited after training: the adapters' shapes no longer match
    (tmp_path / "cap" / "config.json").write_text(json.dumps(config))
    with pytest.raises(PolymodalError, match="is \\[16, 384\\] in the weights, \\[8, 384\\] by config.json"):
        load_captioner(tmp_path / "cap")
    (tmp_path / "cap" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(PolymodalError, match="incomplete"):
        load_captioner(tmp_path / "cap")


def test_caption_scores_rank_right_captions_above_wrong_ones():
    refs = [["a dog runs on the grass", "a brown dog running in a field"], ["a man rides a bike", "a cyclist on a road"],
            ["two children play in the snow", "kids playing in snow"]]
    right = caption_scores(refs, ["a dog running on grass", "a man riding a bike on a road", "children play in snow"])
    wrong = caption_scores(refs, ["a man riding a bike on a road", "children play in snow", "a dog running on grass"])
    assert right["cider"] > wrong["cider"] + 0.5 and right["bleu1"] > wrong["bleu1"]
    assert caption_scores([["A dog, running."]], ["a dog running"])["bleu1"] == pytest.approx(1.0)
    assert caption_tokens("A dog's ball, red!") == "a dog 's ball red"  # PTB's clitic token
    with pytest.raises(PolymodalError, match="one each"):
        caption_scores(refs, ["a dog"])


def _pairs(tmp_path, n=4):
    rows = []
    for i in range(n):
        colour = "red" if i % 2 == 0 else "blue"
        _photo(colour).save(tmp_path / f"p{i}.png")
        rows += [{"image": f"p{i}.png", "caption": CAPTIONS[colour]}, {"image": f"p{i}.png", "caption": f"photo {colour}"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_trains_captions_and_evaluates(tmp_path, capsys):
    pairs = _pairs(tmp_path)
    assert main(["train", "captioner", "--pairs", str(pairs), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--batch-size", "4", "--val-fraction", "0.5", "--quiet"]) == 0  # CIDEr-D needs 2+ photos
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = tmp_path / "run" / "model"
    assert line["model"] == str(model) and "val/loss" in line["best"] and "val/cider" in line["best"]
    assert main(["caption", str(tmp_path / "p0.png"), str(tmp_path / "p1.png"), "--model", str(model), "--json",
                 "--beam", "2"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [o["image"] for o in out] == [str(tmp_path / "p0.png"), str(tmp_path / "p1.png")]
    assert all(isinstance(o["caption"], str) for o in out)
    data = (tmp_path / "p1.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # a readable header, pixels cut off
    for batch in ("1", "8"):  # a damaged photo is reported and skipped, alone or in a batch with others
        assert main(["caption", str(tmp_path / "cut.png"), str(tmp_path / "p0.png"), "--model", str(model),
                     "--json", "--batch-size", batch, "--beam", "2"]) == 0
        streamed = capsys.readouterr()
        lines = [json.loads(x) for x in streamed.out.strip().splitlines()]
        assert [sorted(x) for x in lines] == [["error", "image"], ["caption", "image"]], lines
        assert lines[0]["image"] == str(tmp_path / "cut.png") and "truncated" in lines[0]["error"]
        assert lines[1]["caption"] == out[0]["caption"] and "Traceback" not in streamed.err
    assert main(["caption", str(tmp_path / "p0.png"), str(tmp_path / "cut.png"), "--model", str(model),
                 "--beam", "2"]) == 0
    streamed = capsys.readouterr()
    assert streamed.out.strip() == f"{tmp_path / 'p0.png'}\t{out[0]['caption']}"
    assert streamed.err.strip() == f"polymodal: skipped {tmp_path / 'cut.png'}: {lines[0]['error']}"
    assert main(["caption", str(tmp_path / "cut.png"), str(tmp_path / "cut.png"), "--model", str(model)]) == 2
    assert "none of the 2 images could be read" in capsys.readouterr().err
    assert main(["eval", "captions", "--pairs", str(pairs), "--model", str(model), "--beam", "1", "--examples", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 4 and result["runtime"] == "torch"
    assert 0.0 <= result["bleu4"] <= 1.0 and len(result["examples"]) == 1
    lines = pairs.read_text().splitlines(keepends=True)  # the same rows in two files (one row in both): one set
    (tmp_path / "a.jsonl").write_text("".join(lines[:5]))
    (tmp_path / "b.jsonl").write_text("".join(lines[4:]))
    assert main(["eval", "captions", "--pairs", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--model",
                 str(model), "--beam", "1", "--examples", "1"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both.pop("skipped_rows") == 1 and result.pop("skipped_rows") == 0  # the row in both files counts once
    assert both == result
    assert main(["train", "captioner", "--pairs", str(pairs), "--out", str(tmp_path / "more"), "--model", str(model),
                 "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--quiet"]) == 0  # continue from it
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"] == str(tmp_path / "more" / "model")


def test_cli_mistakes_are_one_line(tmp_path, capsys):
    _photo("red").save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["caption", str(tmp_path / "bad.png")]) == 2
    assert main(["caption", str(tmp_path / "ok.png"), "--model", "lite"]) == 2
    assert "does not write captions" in capsys.readouterr().err
    assert main(["caption", str(tmp_path / "ok.png"), "--beam", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--beam must be a whole number of at least 1, got 0")
    Image.new("RGB", (2000, 1)).save(tmp_path / "strip.png")
    assert main(["caption", str(tmp_path / "ok.png"), str(tmp_path / "strip.png"), "--model", "no-such-model"]) == 2
    assert f"{tmp_path / 'strip.png'} is 2000x1 pixels" in capsys.readouterr().err  # named, before the model loads
    assert main(["train", "captioner", "--pairs", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("why", ["no pycocoevalcap", "one validation photo"])
def test_without_cider_the_validation_loss_chooses_the_epoch(tmp_path, monkeypatch, caplog, why):
    from polymodal.train import captioning

    if why == "no pycocoevalcap":
        monkeypatch.setattr(captioning, "has_caption_metrics", lambda: False)
    else:
        pytest.importorskip("pycocoevalcap")
    recipe = captioning.CaptionRecipe(pairs=[str(_pairs(tmp_path))], out=str(tmp_path / "run"), val_fraction=0.25,
                                      batch_size=4, train={"epochs": 1})  # 4 photos: 1 for validation
    result = captioning.train_captioner(recipe, progress=False)
    assert "val/cider" not in result and result["val/neg_loss"] == pytest.approx(-result["val/loss"])
    assert ("pycocoevalcap is not installed" if why == "no pycocoevalcap" else "CIDEr-D needs at least 2") in caplog.text
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_training_continues_only_from_a_captioner(tmp_path, capsys):
    pairs = _pairs(tmp_path)
    for model in ("lite", str(tmp_path)):
        assert main(["train", "captioner", "--pairs", str(pairs), "--out", str(tmp_path / "r"), "--model", model]) == 2
        assert "pass 'new', 'captioner' or a folder" in capsys.readouterr().err
