"""Mutation audit of the captioner: behaviours the other caption tests left unchecked (REPORT.md lists the mutants).

Beam search runs on hand-made next-piece tables; the metrics on captions whose BLEU / CIDEr-D can be worked out
by hand from the published definitions; the model tests reuse test_captioner's untrained captioner; the export
checks run with the ONNX graphs and onnxruntime replaced by stand-ins, so they take seconds.
"""

import copy
import math

import numpy as np
import pytest
import torch

import test_captioner
from polymodal.errors import PolymodalError
from polymodal.eval.captions import caption_scores
from polymodal.models.beam_search import CLS, PAD, SEP, beam_search, check_decoding
from polymodal.models.captioner import CaptionerConfig
from polymodal.models.lora import LoRALinear
from test_captioner import _logprob, _photo

fresh = test_captioner.fresh  # the untrained captioner fixture, shared rather than rebuilt

VOCAB = 110  # past CLS (101) and SEP (102)


# ---------------------------------------------------------------------------------------------- beam search
def _table_step(tables, offset=0.0):
    """A next-piece model for beam_search: ``tables[image][last piece]`` -> {piece: probability}; the rest of the
    probability is spread over the other pieces. Like a model with a key/value cache, it follows each row's image
    through ``origin``. ``offset`` shifts every row's logits by a different constant (log-softmax undoes it)."""
    rows = {}

    def step(ids, origin):
        if "image" not in rows:  # first call: rows are images x beam, image-major
            rows["image"] = np.repeat(np.arange(len(tables)), len(ids) // len(tables))
        rows["image"] = rows["image"][origin]
        out = np.empty((len(ids), VOCAB), np.float32)
        for r, (image, last) in enumerate(zip(rows["image"], ids[:, -1])):
            probs = tables[image].get(int(last), {})
            rest = (1.0 - sum(probs.values())) / (VOCAB - len(probs))
            out[r] = np.log(rest)
            for piece, p in probs.items():
                out[r, piece] = np.log(p)
            out[r] += offset * (r + 1)
        return out

    return step


# [CLS] -> "5 [SEP]" has the higher total log-probability (-0.80 over 2 pieces: -0.40 each); "6 7 8 [SEP]" the
# higher per piece (-1.52 over 4: -0.38 each)
SHORT_OR_LONG = {CLS: {5: 0.5, 6: 0.3}, 5: {SEP: 0.9}, 6: {7: 0.9}, 7: {8: 0.9}, 8: {SEP: 0.9}}


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_the_length_penalty_ranks_finished_captions_by_log_probability_per_piece(offset):
    step = lambda: _table_step([SHORT_OR_LONG], offset)  # noqa: E731 - a fresh row tracker per search
    assert beam_search(step(), 1, 2, 10, length_penalty=1.0) == [[6, 7, 8]]  # -0.38 per piece beats -0.40
    assert beam_search(step(), 1, 2, 10, length_penalty=0.0) == [[5]]  # the sum: -0.80 beats -1.52
    assert beam_search(step(), 1, 1, 10, length_penalty=1.0) == [[5]]  # greedy never sees the longer one


def test_a_finished_caption_keeps_its_place_when_a_live_one_moves_ahead_of_it():
    """"5 [SEP]" finishes at step 2 behind the live "6 7"; the next step puts it first again. The live caption
    must go on to "6 7 8 9 [SEP]" (-2.26 over 5 pieces beats -1.39 over 2), not stop where the finished one was."""
    table = {CLS: {5: 0.5, 6: 0.45}, 5: {SEP: 0.5}, 6: {7: 0.95}, 7: {8: 0.3}, 8: {9: 0.9}, 9: {SEP: 0.9}}
    assert beam_search(_table_step([table]), 1, 2, 10, length_penalty=1.0) == [[6, 7, 8, 9]]


def test_each_image_continues_its_own_beams():
    tables = [SHORT_OR_LONG, {CLS: {9: 0.8}, 9: {4: 0.8}, 4: {SEP: 0.8}}]
    assert beam_search(_table_step(tables), 2, 3, 10) == [[6, 7, 8], [9, 4]]


def test_padding_is_never_written_and_max_tokens_pieces_are():
    pad_first = {CLS: {PAD: 0.6, 7: 0.3}, 7: {SEP: 0.9}}
    assert beam_search(_table_step([pad_first]), 1, 2, 10) == [[7]]  # not an empty caption ended by padding
    endless = {CLS: {3: 0.9}, 3: {4: 0.9}, 4: {3: 0.9}}
    assert beam_search(_table_step([endless]), 1, 2, 5) == [[3, 4, 3, 4, 3]]


def test_beam_search_is_unchanged_by_huge_logits():
    huge = _table_step([SHORT_OR_LONG])
    assert beam_search(lambda ids, origin: huge(ids, origin) + 1000.0, 1, 2, 10) == [[6, 7, 8]]


def test_the_largest_decoding_options_are_accepted():
    assert check_decoding(20, 512, 3, 1) == (20, 512, 3, 1)  # MAX_BEAM and the last position of the text tower
    CaptionerConfig(max_caption_tokens=512, prefix_grid=7).validate()  # the whole 7x7 grid as the prefix
    for bad, match in (({"prefix_grid": 8}, "finer than the image grid"), ({"image_size": 240}, "multiple of 32"),
                       ({"max_caption_tokens": 513}, "at most 512")):
        with pytest.raises(PolymodalError, match=match):
            CaptionerConfig(**bad).validate()


# ---------------------------------------------------------------------------------------------- metrics
def test_bleu_follows_its_definition():
    # every n-gram right, half the reference's length: the brevity penalty exp(1 - 8/4) alone
    short = caption_scores([["a b c d e f g h"]], ["a b c d"])
    assert [short[f"bleu{n}"] for n in (1, 2, 3, 4)] == pytest.approx([math.exp(-1)] * 4, rel=1e-6)
    # "a b c d" against "a b d c": 4/4 words, 1/3 bigrams, no trigram: BLEU-n is the n-th root of the product
    swapped = caption_scores([["a b d c"]], ["a b c d"])
    assert (swapped["bleu1"], swapped["bleu2"]) == pytest.approx((1.0, math.sqrt(1 / 3)), rel=1e-6)
    assert swapped["bleu3"] < 1e-4 and swapped["bleu4"] < 1e-3
    # a word counts at most as often as the reference has it: 1 of 4 "the"
    assert caption_scores([["the cat"]], ["the the the the"])["bleu1"] == pytest.approx(0.25, rel=1e-6)


def test_cider_d_follows_its_definition():
    """CIDEr-D (Vedantam et al. 2015, the COCO evaluation's variant): per n = 1..4 the cosine of tf-idf vectors with
    the hypothesis' weights clipped at the reference's, times exp(-(length difference)^2 / (2 * 6^2)); the mean
    over n, x10. The idf comes from the references of the set: here every n-gram is in 1 of 2 photos' references."""
    refs = [["a b"], ["c d"]]
    assert caption_scores(refs, ["a b", "c d"])["cider"] == pytest.approx(5.0)  # cosine 1 for n = 1, 2; 0 for 3, 4
    # 4 extra words: unigram cosine 2/sqrt(6*2), bigram 1/sqrt(5*1), and a length difference of 4
    longer = 10 * (2 / math.sqrt(12) + 1 / math.sqrt(5)) / 4 * math.exp(-16 / 72)
    assert caption_scores(refs, ["a b x y z w", "c d"])["cider"] == pytest.approx((longer + 5) / 2, rel=1e-6)
    # "a b a b": "a", "b", "a b" twice as often as the reference has them, clipped to once
    doubled = 10 * (2 / math.sqrt(8 * 2) + 1 / math.sqrt(5)) / 4 * math.exp(-4 / 72)
    assert caption_scores(refs, ["a b a b", "c d"])["cider"] == pytest.approx((doubled + 5) / 2, rel=1e-6)
    # a word every photo's references use weighs nothing
    assert caption_scores([["a dog"], ["a cat"]], ["a", "a"])["cider"] == 0.0


def test_hypotheses_and_references_are_compared_as_the_same_tokens():
    plain = caption_scores([["a dog running"], ["a red ball"]], ["a dog running", "a red ball"])
    written = caption_scores([["a dog running"], ["a red ball"]], ["A dog, running.", "A red ball!"])
    assert written == plain and plain["bleu1"] == pytest.approx(1.0)
    # which side is the reference matters: 3 of the hypothesis' 6 words are right, and it is not too short
    assert caption_scores([["a dog runs"]], ["a dog runs on the grass"])["bleu1"] == pytest.approx(0.5)
    with pytest.raises(PolymodalError, match="at least one reference"):
        caption_scores([["a dog"], []], ["a dog", "a cat"])


def test_evaluation_scores_each_readable_photo_against_its_own_references(tmp_path):
    from polymodal.data.pairs import Pair, PairSet
    from polymodal.eval.captions import evaluate_captions

    class ByColour:  # writes each photo's right caption
        def caption(self, images, beam=3, max_tokens=20, **decoding):
            return [test_captioner.CAPTIONS["red" if im.getpixel((48, 48)) == (220, 20, 20) else "blue"] for im in images]

    rows = []
    for name in ("red", "broken", "blue", "red"):
        path = tmp_path / f"{len(rows)}-{name}.png"
        _photo(name).save(path) if name != "broken" else path.write_text("not a photo")
        rows.append(Pair(str(path), test_captioner.CAPTIONS.get(name, "a broken photo")))
    pairs = PairSet.from_pairs(rows)
    out = evaluate_captions(ByColour(), pairs, progress=False, examples=5)
    assert (out["images"], out["unreadable"]) == (3, 1)
    assert out["bleu1"] == pytest.approx(1.0) and out["bleu4"] == pytest.approx(1.0) and out["cider"] > 1
    assert [(e["caption"], e["reference"]) for e in out["examples"]] == [
        (test_captioner.CAPTIONS[c],) * 2 for c in ("red", "blue", "red")]
    limited, items = evaluate_captions(ByColour(), pairs, limit=2, progress=False, details=[]), []
    assert (limited["images"], limited["unreadable"]) == (1, 1)  # the first two photos: one reads
    evaluate_captions(ByColour(), pairs, limit=2, progress=False, details=items)
    assert items[0]["caption"] == test_captioner.CAPTIONS["red"] and items[0]["references"] == [items[0]["caption"]]
    assert "error" in items[1] and "caption" not in items[1] and len(items) == 2
    with pytest.raises(PolymodalError, match="--limit must be at least 1"):
        evaluate_captions(ByColour(), pairs, limit=0, progress=False)

    # the same photos as a pairs file, or read by eval.retrieval.read_pairs: the same scores
    import json

    from polymodal.eval.retrieval import read_pairs

    readable = [r for r in rows if "broken" not in str(r.image)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"image": str(r.image), "caption": r.caption}) + "\n" for r in readable))
    by_file = evaluate_captions(ByColour(), str(path), progress=False)
    by_retrieval = evaluate_captions(ByColour(), read_pairs(path), progress=False)
    assert by_file["bleu4"] == by_retrieval["bleu4"] == pytest.approx(1.0) and by_file["images"] == 3
    with pytest.raises(PolymodalError, match="not dict"):
        evaluate_captions(ByColour(), {"image": "x"}, progress=False)


# ---------------------------------------------------------------------------------------------- the model
def test_the_loss_is_the_mean_next_piece_log_loss_over_real_pieces_only(fresh):
    """A padded batch's loss is the per-piece mean over both captions, each piece predicted from the ones before
    it ([SEP] last, padding never)."""
    grid = torch.randn(1, 49, 1280)
    captions = ["a dog", "a much longer caption about a dog on a beach"]
    ids, mask = fresh.tokenize(captions)
    assert not mask[0].all()  # the short one is padded
    pieces = [fresh.tokenize([c])[0][0, 1:-1].tolist() for c in captions]
    log_losses = [-_logprob(fresh, grid, p) for p in pieces]
    counts = [len(p) + 1 for p in pieces]  # every word piece and [SEP]
    with torch.no_grad():
        loss = float(fresh.loss(grid.expand(2, -1, -1), ids, mask))
        smoothed = float(fresh.loss(grid.expand(2, -1, -1), ids, mask, label_smoothing=0.1))
    assert loss == pytest.approx(sum(log_losses) / sum(counts), rel=1e-4)
    # label smoothing 0.1: 0.9 x that + 0.1 x the mean over the vocabulary of -log p, per real piece
    with torch.no_grad():
        logp = torch.log_softmax(fresh.logits(fresh.hidden(fresh.prefix(grid.expand(2, -1, -1)), ids[:, :-1],
                                                            mask[:, :-1])), -1)
    uniform = float(-logp.mean(-1)[mask[:, 1:]].mean())
    assert smoothed == pytest.approx(0.9 * loss + 0.1 * uniform, rel=1e-4)

    from polymodal.train.captioning import CaptionObjective

    with torch.no_grad():
        objective, logged = CaptionObjective(0.1).compute(fresh, (grid.expand(2, -1, -1), ids, mask))
    assert float(objective) == pytest.approx(smoothed, rel=1e-5) and logged["caption_loss"] == pytest.approx(smoothed)


def test_each_prefix_token_pools_its_own_region_of_the_grid(fresh):
    """The prefix is the grid's mean, then the 7x7 grid pooled to 3x3 row by row: cell (0, 6) (top right) lies in
    region (0, 2) only, so it moves the mean and the third region's token and no other."""
    grid = torch.randn(1, 49, 1280)
    moved = grid.clone()
    moved[0, 6] += 5.0 * torch.randn(1280)  # not a constant: the LayerNorm before the projection removes that
    with torch.no_grad():
        changed = (fresh.prefix(moved) - fresh.prefix(grid)).abs().amax(-1)[0]
    assert [i for i, d in enumerate(changed.tolist()) if d > 1e-4] == [0, 3]
    with torch.no_grad():  # a featureless photo (every cell the same): the tokens still differ by their position
        tokens = fresh.prefix(torch.randn(1, 1, 1280).expand(1, 49, -1))[0]
    assert torch.cdist(tokens, tokens)[~torch.eye(len(tokens), dtype=torch.bool)].min() > 1e-2


def test_a_batch_of_photos_gets_the_captions_each_photo_gets_alone(fresh):
    grid = torch.randn(2, 49, 1280)
    together = fresh.generate(grid, beam=3, max_tokens=6)
    assert together == [fresh.generate(grid[i : i + 1], beam=3, max_tokens=6)[0] for i in range(2)]
    assert together[0] != together[1]


def test_training_mode_leaves_the_frozen_towers_as_they_are(fresh):
    photo = [_photo("red")]
    ids, _ = fresh.tokenize(["a dog on the grass"])
    with torch.no_grad():
        grids, words = fresh.encode_images(photo), fresh.decoder.embeddings(ids, None)
        fresh.train()
        try:
            trained = [(fresh.encode_images(photo), fresh.decoder.embeddings(ids, None)) for _ in range(2)]
        finally:
            fresh.eval()
        again = fresh.encode_images(photo)
    for g, w in trained:  # no batch statistics, no dropout
        torch.testing.assert_close(g, grids)
        torch.testing.assert_close(w, words)
    torch.testing.assert_close(again, grids)  # nor running statistics moved by a training-mode pass


def test_adapters_cover_every_linear_layer_and_scale_by_alpha_over_rank(fresh):
    for layer in fresh.decoder.encoder.layer:
        linears = {n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        adapted = {n for n, m in layer.named_modules() if isinstance(m, LoRALinear)}
        assert linears == {f"{n}.base" for n in adapted} and len(adapted) == 6
    trained = fresh.trained_state()
    norms = [n for n, _ in fresh.decoder.encoder.named_parameters() if "LayerNorm" in n]
    assert norms and all(f"decoder.encoder.{n}" in trained for n in norms)  # weights and biases

    base = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    for rank, alpha in ((2, 4.0), (4, 2.0)):
        adapted = LoRALinear(base, rank=rank, alpha=alpha)
        with torch.no_grad():
            adapted.lora_b.copy_(torch.randn(4, rank))
            update = x @ adapted.lora_a.t() @ adapted.lora_b.t()
            torch.testing.assert_close(adapted(x), base(x) + alpha / rank * update)


# ---------------------------------------------------------------------------------------------- training
def test_validation_scores_greedy_captions_of_the_first_photos(fresh, monkeypatch):
    from polymodal.data.pairs import Pair, PairSet
    from polymodal.train import captioning

    grids = np.random.default_rng(0).standard_normal((4, 49, 1280)).astype(np.float32)
    with torch.no_grad():
        greedy = [fresh.decode(p) for p in fresh.generate(torch.from_numpy(grids), beam=1)]
    # photos 0, 1 are described by what the model writes greedily, photo 2 by something else, photo 3 is past the
    # limit; captions of equal length, so the validation loss is a plain mean whatever the batches
    captions = [greedy[0], greedy[1], "a dog runs on the grass", greedy[3]]
    pairs = PairSet.from_pairs([Pair(f"p{i}.png", c) for i, c in enumerate(captions)])
    with torch.no_grad():
        out = captioning.caption_eval(fresh, pairs, grids, limit=3, batch_size=2)
    want = caption_scores([[c] for c in captions[:3]], greedy[:3])
    assert out["val/bleu4"] == pytest.approx(want["bleu4"]) and out["val/cider"] == pytest.approx(want["cider"])
    assert 0 < out["val/bleu4"] < 1

    same_length = ["a red dog runs", "a blue cat sits", "a green bird flies", "a white horse jumps"]
    pairs = PairSet.from_pairs([Pair(f"p{i}.png", c) for i, c in enumerate(same_length)])
    ids, mask = fresh.tokenize(same_length)
    assert mask.all()
    monkeypatch.setattr(captioning, "has_caption_metrics", lambda: False)
    with torch.no_grad():
        loss = float(fresh.loss(torch.from_numpy(grids), ids, mask))
        out = captioning.caption_eval(fresh, pairs, grids, limit=3, batch_size=3)  # batches of 3 and 1
    assert out == pytest.approx({"val/loss": loss, "val/neg_loss": -loss}, rel=1e-5)


# ---------------------------------------------------------------------------------------------- ONNX export
COLOURED = {(200, 30, 30): "a red square", (30, 160, 30): "a green field", (30, 30, 200): "a blue sky",
            (230, 220, 40): "a yellow sun", (120, 60, 20): "a brown table"}


class _FakeOnnx:
    """Stands in for OnnxCaptioner (no graphs, no onnxruntime): the PyTorch model's first-step logits and its
    captions, with what a test's ``damage`` changes, per graph the export's config serves."""

    model, damage = None, {}

    def __init__(self, folder, threads=None) -> None:
        from polymodal.export.runtime import graph_files, read_export_config

        self.step_file = graph_files(read_export_config(folder))["step"]

    def first_logits(self, images):
        from polymodal.export.caption_export import _first_logits

        return self.damage.get("logits", lambda x: x)(_first_logits(self.model, images))

    def caption(self, images, beam=3, **decoding):
        return self.damage.get(self.step_file, lambda x: x)(self.model.caption(images, beam=beam))

    def release_memory(self, image):  # (no arenas to give back)
        pass


@pytest.fixture
def export_stand_ins(fresh, monkeypatch, tmp_path):
    """A copy of the captioner that writes each coloured photo's caption, the photos, and the export's graphs,
    runtime, quantizer and timing replaced by stand-ins; -> (model, photo paths)."""
    import polymodal.export.caption_export as caption_export
    import polymodal.export.caption_runtime as caption_runtime
    import polymodal.export.onnx_export as onnx_export
    from PIL import Image

    model = copy.deepcopy(fresh)  # the export freezes the model it is handed
    model.caption = lambda images, beam=3, **decoding: [COLOURED[im.getpixel((0, 0))] for im in images]
    photos = []
    for colour in COLOURED:
        photos.append(tmp_path / f"{len(photos)}.png")
        Image.new("RGB", (64, 64), colour).save(photos[-1])
    monkeypatch.setattr(caption_export, "export_graph", lambda *a, **k: None)
    monkeypatch.setattr(caption_runtime, "OnnxCaptioner", _FakeOnnx)
    monkeypatch.setattr(caption_export.V, "int8_dynamic", lambda fp32, out, calibration=None: out.write_bytes(b"q"))
    monkeypatch.setattr(onnx_export, "paired_speed", lambda *a, **k: (20.0, 10.0))  # int8 twice as fast
    monkeypatch.setattr(_FakeOnnx, "model", model)
    return model, photos


def test_the_export_refuses_graphs_whose_logits_or_captions_differ_from_pytorch(export_stand_ins, tmp_path,
                                                                                 monkeypatch):
    from polymodal.export.caption_export import export_captioner_onnx

    model, photos = export_stand_ins
    report = export_captioner_onnx(model, tmp_path / "ok", photos[:2], variants=[])
    assert report["parity"] == {"min_first_step_logit_cosine": pytest.approx(1.0, abs=1e-5), "same_captions": 1.0}

    def one_photo_wrong(logits):  # the second photo's logits shuffled: its cosine drops, the first stays 1
        return np.stack([logits[0], np.random.default_rng(0).permutation(logits[1])])

    for damage in ({"logits": one_photo_wrong}, {"step.onnx": lambda caps: [caps[0], "a cat"]}):
        monkeypatch.setattr(_FakeOnnx, "damage", damage)
        with pytest.raises(PolymodalError, match="parity failed"):
            export_captioner_onnx(model, tmp_path / "wrong", photos[:2], variants=[])


@pytest.mark.parametrize("int8_captions, verdict", [("same", "kept"), ("shuffled", "rejected")])
def test_the_int8_step_graph_is_gated_on_its_cider_d_drop(export_stand_ins, tmp_path, monkeypatch, int8_captions,
                                                          verdict):
    """Five readable validation photos (the fewest the gate takes) beside a broken one; the int8 graph twice as
    fast: kept when it writes fp32's captions, rejected when it writes worse ones."""
    from polymodal.export.caption_export import export_captioner_onnx
    from polymodal.export.runtime import read_export_config

    model, photos = export_stand_ins
    (tmp_path / "broken.png").write_text("not a photo")
    images = [*photos[:2], tmp_path / "broken.png", *photos[2:]]
    references = [[COLOURED[c]] for c in COLOURED]
    references.insert(2, ["a broken photo"])
    if int8_captions == "shuffled":
        monkeypatch.setattr(_FakeOnnx, "damage", {"step.int8_dynamic.onnx": lambda caps: caps[1:] + caps[:1]})
    report = export_captioner_onnx(model, tmp_path / "onnx", images, references)  # variants: the default
    (row,) = report["tries"]
    assert (row["variant"], row["status"]) == ("int8_dynamic", verdict), row
    assert row["cider_fp32"] > 1 and report["photos"] == 5
    if verdict == "kept":
        assert row["drop_points"] == 0 and report["served"] == "step.int8_dynamic.onnx"
        assert read_export_config(tmp_path / "onnx")["files"] == {"step": "step.int8_dynamic.onnx"}
    else:
        assert row["drop_points"] == pytest.approx(100 * (row["cider_fp32"] - row["cider"])) and row["drop_points"] > 1
        assert report["served"] == "step.onnx" and "files" not in read_export_config(tmp_path / "onnx")


class _LoopingSession:
    """Stand-in onnxruntime sessions of an export whose decoder favours piece 7 + the photo's number at every
    step. The keys cache the photo's number, then each piece written: the step checks that the position it is
    handed is where its piece lands in that cache."""

    def __init__(self, graph) -> None:
        self.graph = graph

    def run(self, outputs, feeds, options=None):  # (as InferenceSession.run: run options last)
        if self.graph == "prefix":
            keys = feeds["pixels"][:, :1, :1, :1][None].astype(np.float32)  # [layers 1, B, heads 1, P 1, 1]
            return [keys, keys]
        keys, ids, position = feeds["keys"], feeds["ids"], feeds["position"]
        assert keys.shape[3] == position[0] + 1  # the photo + the pieces before this one
        logits = np.zeros((len(ids), VOCAB), np.float32)
        logits[np.arange(len(ids)), 7 + keys[0, :, 0, 0, 0].astype(int)] = 10.0
        grown = np.concatenate([keys, ids[None, :, None, :, None].astype(np.float32)], 3)
        return [logits, grown, grown]


def test_the_onnx_runtime_decodes_each_photo_from_its_own_prefix_and_honours_no_repeat():
    from polymodal.export.caption_runtime import OnnxCaptioner

    runtime = object.__new__(OnnxCaptioner)  # the graphs replaced by stand-ins
    runtime.prefix, runtime.step = _LoopingSession("prefix"), _LoopingSession("step")
    runtime.files = {"prefix": "prefix.onnx", "step": "step.onnx"}  # fp32: the photos decode together
    runtime.transform = lambda images: np.stack([np.full((3, 2, 2), float(np.asarray(im)[0, 0, 0])) for im in images])
    runtime.tokenizer = type("Pieces", (), {"decode": staticmethod(lambda pieces: " ".join(map(str, pieces)))})
    photos = [np.full((8, 8, 3), n, np.uint8) for n in (1, 2, 3)]  # 3 photos x beam 3: each photo keeps its own
    assert runtime.caption(photos, max_tokens=4, no_repeat=0) == ["8 8 8 8", "9 9 9 9", "10 10 10 10"]
    for caption in runtime.caption(photos, max_tokens=6):  # the default, as PyTorch: no piece twice in a row
        pieces = caption.split()
        assert len(pieces) == 6 and all(a != b for a, b in zip(pieces, pieces[1:])), caption


def test_a_run_without_validation_photos_saves_the_model_it_ended_with(tmp_path, monkeypatch):
    """No validation: the training loss alone would keep epoch 1 (its lowest); the run's model is the last one.
    The epochs are stand-ins that set lm_bias to the epoch's number."""
    from safetensors.torch import load_file

    from polymodal.train import captioning
    from polymodal.train.trainer import Trainer

    def epoch(trainer, logger):
        with torch.no_grad():
            trainer.model.lm_bias.fill_(trainer.epoch + 1.0)
        return {"train_loss": trainer.epoch + 1.0}  # rising

    monkeypatch.setattr(Trainer, "_train_epoch", epoch)
    recipe = captioning.CaptionRecipe(pairs=[str(test_captioner._pairs(tmp_path, n=2))], out=str(tmp_path / "run"),
                                      val_fraction=0.0, batch_size=4, train={"epochs": 2})
    captioning.train_captioner(recipe, progress=False)
    assert load_file(tmp_path / "run" / "model" / "model.safetensors")["lm_bias"].unique().tolist() == [2.0]


def test_two_validation_photos_are_enough_for_cider_d_to_choose_the_epoch(tmp_path, caplog):
    from polymodal.train import captioning

    pytest.importorskip("pycocoevalcap")
    recipe = captioning.CaptionRecipe(pairs=[str(test_captioner._pairs(tmp_path))], out=str(tmp_path / "run"),
                                      val_fraction=0.5, batch_size=4, train={"epochs": 1})  # 4 photos: 2 validate
    result = captioning.train_captioner(recipe, progress=False)
    assert recipe.train.early_stop_metric == "val/cider" and "val/cider" in result
    assert "CIDEr-D needs" not in caplog.text


def test_each_training_caption_comes_with_its_own_photos_grid():
    from polymodal.data.pairs import Pair, PairSet
    from polymodal.train.captioning import _Captions

    pairs = PairSet.from_pairs([Pair("a.png", "a red square"), Pair("b.png", "two blue circles"),
                                Pair("a.png", "a square"), Pair("c.png", "a cat"), Pair("b.png", "circles")])
    grids = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 49, 4), np.float32)  # photo i: all i
    items = [_Captions(grids, pairs)[i] for i in range(len(pairs))]
    assert [(float(g.mean()), c) for g, c in items] == [(0, "a red square"), (1, "two blue circles"), (0, "a square"),
                                                       (2, "a cat"), (1, "circles")]
