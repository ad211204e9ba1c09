"""Fusion-encoder pretraining: the ITM / MLM / MRM losses on hand-made examples, leak-free MLM masking, MRM's
fusion requirement, hard-negative mining, multi-task pretraining through the CLI on a tiny caption set over the
sample gallery, and pretrain -> save -> fine-tune VQA (weights carried over, a fresh head, frozen parts fixed)."""

import json
import math

import numpy as np
import pytest
import torch

import polymodal
from polymodal import cli
from polymodal.data.pairs import Pair, PairSet
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.fusion import build_fusion
from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig, load_fusion_encoder
from polymodal.train.caption_matches import CaptionMatches
from polymodal.train.pretrain import (
    CaptionData,
    CaptionRows,
    mask_token_ids,
    maskable_words,
    masked_caption_ids,
    mine_pairs,
    parse_objectives,
    region_masks,
    whole_word_mask,
)
from polymodal.train.pretrain_objectives import (
    IGNORE,
    itm_loss,
    mlm_loss,
    mrm_classification_loss,
    mrm_regression_loss,
)
from polymodal.train.trainer import set_seed
from polymodal.train.vqa import VQARecipe, build_vqa_model
from conftest import cli_json

NAMES = sorted({**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS})
TEMPLATES = ("a photo of a {}", "there is a {} in this picture", "the {} is shown here")


# -- pure pieces -------------------------------------------------------------------------------------------------------


def test_losses_on_hand_made_examples():
    # ITM: BCE of logits [0, 2] against labels [1, 0] = (log 2 + log(1 + e^2)) / 2
    assert float(itm_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))) == pytest.approx(
        (math.log(2) + math.log1p(math.exp(2))) / 2, rel=1e-6)
    # MLM: uniform logits over 4 words -> log 4; a confident right answer -> about 0
    assert float(mlm_loss(torch.zeros(3, 4), torch.tensor([0, 1, 3]))) == pytest.approx(math.log(4))
    assert float(mlm_loss(torch.tensor([[20.0, 0, 0, 0]]), torch.tensor([0]))) < 1e-6
    # MRM regression: the target cell [1, 2, 3] is standardised to [-1.2247, 0, 1.2247] (eps aside)
    z = torch.tensor([[-1.0, 0.0, 1.0]]) * math.sqrt(1.5)
    assert float(mrm_regression_loss(z, torch.tensor([[1.0, 2.0, 3.0]]))) == pytest.approx(0.0, abs=1e-4)
    assert float(mrm_regression_loss(torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 3.0]]))) == pytest.approx(1.0, abs=1e-4)
    # scale of the tower's activations does not matter
    assert float(mrm_regression_loss(z, torch.tensor([[10.0, 20.0, 30.0]]))) == pytest.approx(0.0, abs=1e-4)
    # MRM classification: KL(p || q) for p = (0.5, 0.5) (equal logits), q = softmax(log 0.9, log 0.1)
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    pred = torch.log(torch.tensor([[0.9, 0.1]]))
    assert float(mrm_classification_loss(pred, torch.zeros(1, 2))) == pytest.approx(kl, rel=1e-5)
    assert float(mrm_classification_loss(torch.randn(5, 7).mul(0) + 3, torch.zeros(5, 7))) == pytest.approx(0.0, abs=1e-6)


def test_objective_spec_parsing():
    assert parse_objectives("itm:1,mlm:1,mrm:0.5") == {"itm": 1.0, "mlm": 1.0, "mrm": 0.5}
    assert parse_objectives("mlm") == {"mlm": 1.0}
    for bad in ("itm:x", "vqa:1", "itm:0", ""):
        with pytest.raises(polymodal.PolymodalError):
            parse_objectives(bad)


def test_hard_negative_mining_returns_the_most_similar_non_matching_items():
    # eye(3) image embeddings: the product is caption_emb.T, exactly. Image 0 has caption 0, image 1 captions 1
    # and 4, image 2 captions 2 and 3
    sim = np.array([[0.9, 0.8, 0.1, 0.7, 0.3],
                    [0.2, 0.95, 0.6, 0.5, 0.4],
                    [0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    owner = [0, 1, 2, 2, 1]
    five = PairSet.from_pairs([Pair(f"{'abc'[i]}.jpg", f"caption {c}") for c, i in enumerate(owner)])
    positive = CaptionMatches.of(five).image_rows(np.arange(3))
    top, _ = mine_pairs(np.eye(3, dtype=np.float32), sim.T.copy(), five, k=2)
    assert top[:2].tolist() == [[1, 3], [2, 3]]  # most similar first; the positives (0.9, 0.95) never come back
    everything, _ = mine_pairs(np.eye(3, dtype=np.float32), sim.T.copy(), five, k=10)
    # k is clipped to the fewest non-positives (3)
    assert everything.shape == (3, 3) and not positive[np.arange(3)[:, None], everything].any()
    with pytest.raises(polymodal.PolymodalError):  # one image: its captions all match it, none to mine
        mine_pairs(np.eye(3, dtype=np.float32)[:1], np.eye(3, dtype=np.float32)[:2],
                   PairSet.from_pairs([Pair("a.jpg", "x"), Pair("a.jpg", "y")]), 1)

    # images x captions: image 0 has captions 0, 1; image 1 caption 2 (same text as caption 0!); image 2 caption 3
    pairs = PairSet.from_pairs([Pair("a.jpg", "A dog runs ."), Pair("a.jpg", "grass"), Pair("b.jpg", "a dog runs"),
                                Pair("c.jpg", "a cat")])
    pos = CaptionMatches.of(pairs).image_rows(np.arange(3))
    assert pos.tolist() == [[True, True, True, False], [True, False, True, False], [False, False, False, True]]
    image_emb = np.eye(3, dtype=np.float32)
    caption_emb = np.array([[1, 0, 0], [1, 0, 0], [0.9, 0.1, 0], [0.1, 0.9, 0.2]], dtype=np.float32)
    hard_captions, hard_images = mine_pairs(image_emb, caption_emb, pairs, k=1)
    # image 0's captions 0-2 all match it (caption 2 has the same text), so its hardest negative is caption 3
    assert hard_captions[:, 0].tolist() == [3, 3, 0]
    assert hard_images[:, 0].tolist() == [2, 1, 2, 1]


def test_whole_word_masking_and_region_masks():
    special = {"[CLS]", "[SEP]", "[PAD]"}
    tokens = ["[CLS]", "a", "skate", "##board", "##er", "jumps", ".", "[SEP]"]
    assert maskable_words(tokens, special) == [[1], [2, 3, 4], [5]]  # no punctuation, no special tokens
    rng = np.random.default_rng(0)
    for _ in range(20):
        positions = whole_word_mask(tokens, 0.15, rng, special)
        assert positions in ([1], [2, 3, 4], [5])  # one whole word (15% of 3 words, at least 1)
    masked, targets = mask_token_ids([101, 7, 8, 9, 10, 11, 12, 102], [2, 3, 4], mask_id=103)
    assert masked == [101, 7, 103, 103, 103, 11, 12, 102]
    assert targets == [IGNORE, IGNORE, 8, 9, 10, IGNORE, IGNORE, IGNORE]
    regions = region_masks(6, 49, 0.15, np.random.default_rng(1))
    assert regions.shape == (6, 49) and (regions.sum(1) == 7).all()


# -- with the towers -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    return FusionEncoder(FusionEncoderConfig(fusion="co_attention", dim=32, dropout=0.0, itm_head=True,
                                             mlm_head=True, mrm_head="regress")).eval()


def test_mlm_masking_leaks_nothing(encoder):
    tok = encoder.text_tower.tokenizer
    dog, cat = (tok(f"a {w} runs on the grass")["input_ids"] for w in ("dog", "cat"))
    (where,) = [i for i, (a, b) in enumerate(zip(dog, cat)) if a != b]
    masked_dog, target_dog = mask_token_ids(dog, [where], tok.mask_token_id)
    masked_cat, target_cat = mask_token_ids(cat, [where], tok.mask_token_id)
    assert masked_dog == masked_cat and target_dog != target_cat  # the word is only in the targets
    attn = torch.ones(2, len(dog), dtype=torch.long)
    states = encoder.text_states(torch.tensor([masked_dog, masked_cat]), attn)
    assert torch.equal(states[0], states[1])  # the model input is identical: nothing about dog vs cat leaks

    # the cached MLM rows: every predicted position holds [MASK] in the input, every other position the word
    captions = ["a dog runs on the grass .", "two skateboarders jump over a red wall", "hi"]
    rows, targets = masked_caption_ids(encoder, captions, variants=3, rate=0.15, seed=0)
    originals = [tok(c)["input_ids"] for c in captions] * 3
    for row, target, original in zip(rows, targets, originals):
        predicted = target[: len(row)] != IGNORE
        assert predicted.any()
        assert all(row[i] == tok.mask_token_id and target[i] == original[i] for i in np.flatnonzero(predicted))
        assert all(row[i] == original[i] for i in np.flatnonzero(~predicted))


def test_mlm_and_mrm_need_fused_tokens_of_their_modality(encoder):
    with pytest.raises(polymodal.PolymodalError, match="fused image tokens.*co_attention or single_stream"):
        FusionEncoderConfig(fusion="concat", mrm_head="regress").validate()
    with pytest.raises(polymodal.PolymodalError, match="no per-token outputs"):
        FusionEncoder(FusionEncoderConfig(fusion="gated", mlm_head=True))
    with pytest.raises(polymodal.PolymodalError, match="only for the text"):  # text tokens query the grid
        FusionEncoderConfig(fusion="cross_attention", fusion_options={"query": 1}, mrm_head="classify").validate()
    FusionEncoderConfig(fusion="cross_attention", fusion_options={"query": 0}, mrm_head="regress").validate()
    with pytest.raises(polymodal.PolymodalError, match="mrm_head must be"):
        FusionEncoderConfig(fusion="co_attention", mrm_head="predict").validate()

    # at run time too: a fusion without token outputs cannot serve MRM or MLM
    images = torch.randn(2, 49, 1280)
    states, mask = torch.randn(2, 5, 384), torch.ones(2, 5, dtype=torch.bool)
    regions = torch.zeros(2, 49, dtype=torch.bool)
    regions[:, 3] = True
    assert encoder.mrm_predictions(images, states, mask, regions).shape == (2, 1280)
    saved = encoder.fusion
    try:
        encoder.fusion = build_fusion("concat", [32, 32], 32)
        with pytest.raises(polymodal.PolymodalError, match="no fused image tokens for MRM"):
            encoder.mrm_predictions(images, states, mask, regions)
        with pytest.raises(polymodal.PolymodalError, match="no fused text tokens for MLM"):
            encoder.mlm_logits(images, states, mask, mask)
    finally:
        encoder.fusion = saved


def test_mrm_mask_hides_the_masked_cells(encoder):
    images = torch.randn(1, 49, 1280)
    states, mask = torch.randn(1, 4, 384), torch.ones(1, 4, dtype=torch.bool)
    regions = torch.zeros(1, 49, dtype=torch.bool)
    regions[0, [0, 10, 20]] = True
    changed = images.clone()
    changed[0, [0, 10, 20]] = torch.randn(3, 1280)  # other content in the masked cells only
    with torch.no_grad():
        a = encoder.mrm_predictions(images, states, mask, regions)
        b = encoder.mrm_predictions(changed, states, mask, regions)
    assert torch.allclose(a, b)  # the prediction never sees what it must reconstruct
    assert not torch.equal(encoder.mrm_targets(images, regions), encoder.mrm_targets(changed, regions))


def _toy_caption_data(**kw):
    """4 images x 2 captions; image i is all i, caption c is all c; image i's mined negative caption is one of i+1's."""
    pairs = PairSet.from_pairs([Pair(f"{i}.jpg", f"caption {i} {j}") for i in range(4) for j in range(2)])
    feats = np.broadcast_to(np.arange(4, dtype=np.float16)[:, None, None], (4, 49, 1280))
    states = np.broadcast_to(np.arange(8, dtype=np.float16)[:, None, None], (8, 3, 384))
    return CaptionData(pairs, feats, states, np.full(8, 3), **kw)


def test_itm_rows_use_mined_negatives():
    data = _toy_caption_data(hard_captions=np.array([[2], [4], [6], [0]]),  # image i's: a caption of image i + 1
                             hard_images=np.array([[3], [3], [0], [0], [1], [1], [2], [2]]))

    def rows(batch):  # (image, caption) of each row
        return [(int(batch.images[i, 0, 0]), int(s[0, 0])) for i, s in zip(batch.row_image, batch.states)]

    batch = CaptionRows(data, "itm", hard=1.0).collate([0, 5])
    assert batch.itm_labels.tolist() == [1, 1, 0, 0, 0, 0]
    assert rows(batch) == [(0, 0), (2, 5), (0, 2), (2, 6), (3, 0), (1, 5)]  # positives, hard captions, hard images
    for hard in (0.0, 0.5):
        batch = CaptionRows(data, "itm", hard=hard).collate(list(range(8)))
        assert batch.itm_labels.sum() == 8 and len(batch.row_image) == 24
        assert all((image == caption // 2) == bool(label) for (image, caption), label in zip(rows(batch), batch.itm_labels))


def test_hard_fraction_mixes_mined_and_uniform_negatives():
    data = _toy_caption_data(hard_captions=np.array([[2], [4], [6], [0]]),
                             hard_images=np.array([[3], [3], [0], [0], [1], [1], [2], [2]]))

    def mined_share(hard):
        rows = CaptionRows(data, "itm", hard=hard)
        hits = []
        for epoch in range(40):
            rows.set_epoch(epoch)
            b = rows.collate(list(range(8)))
            negatives = b.states[8:16, 0, 0].long()  # the negative captions of images 0,0,1,1,...
            hits += (negatives == torch.tensor([(2 * (c // 2) + 2) % 8 for c in range(8)])).tolist()
        return float(np.mean(hits))

    # uniform picks the mined caption 1 time in 6; half hard: 1/2 + 1/2 * 1/6 = 0.58
    assert mined_share(0.0) < 0.3 and 0.45 < mined_share(0.5) < 0.72 and mined_share(1.0) == 1.0


def test_mlm_rows_use_the_masked_copy_of_the_epoch():
    variants, width = 2, 3
    m_states = np.zeros((variants * 8, width, 384), np.float16)
    m_targets = np.zeros((variants * 8, width), np.int64)
    for v in range(variants):
        for c in range(8):
            m_states[v * 8 + c], m_targets[v * 8 + c] = 100 * v + c, 1000 * v + c
    data = _toy_caption_data()
    data.mlm = (m_states, np.full(variants * 8, width), m_targets)
    rows = CaptionRows(data, "mlm")
    for epoch in (0, 1, 2):
        rows.set_epoch(epoch)
        b = rows.collate([1, 6])
        v = epoch % variants
        assert b.states[:, 0, 0].tolist() == [100 * v + 1, 100 * v + 6]  # masked words, never the clean caption
        assert b.mlm_targets[:, 0].tolist() == [1000 * v + 1, 1000 * v + 6]


# -- training through the CLI -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs_file(gallery):
    path = gallery / "pairs.jsonl"
    with path.open("w") as f:
        for name in NAMES:
            for t in TEMPLATES:
                f.write(json.dumps({"image": f"{name}.jpg", "caption": t.format(name)}) + "\n")
    return path


@pytest.fixture(scope="module")
def pretrained(pairs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain-run")
    return out, cli_json(["train", "pretrain", "--pairs", str(pairs_file), "--val-pairs", str(pairs_file),
                          "--out", str(out), "--objectives", "itm:1,mlm:1,mrm:0.5", "--fusion", "co_attention",
                          "--dim", "64", "--dropout", "0", "--epochs", "12", "--lr", "3e-3", "--batch-size", "16",
                          "--warmup-steps", "5", "--patience", "0", "--hard-k", "4", "--quiet"])


def test_multitask_pretraining_reduces_each_loss(pretrained):
    out, result = pretrained
    val = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    for key in ("val/itm_loss_hard", "val/mlm_loss", "val/mrm_loss"):
        assert val[-1][key] < val[0][key], key
    assert val[-1]["val/mlm_accuracy"] > val[0]["val/mlm_accuracy"]
    assert result["best"]["val/itm_accuracy_hard"] > 2 / 3  # every row a negative: 2/3
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["answers"] == [] and config["mlm_head"] and config["mrm_head"] == "regress" and config["itm_head"]
    model = polymodal.load(str(out / "model"))
    with pytest.raises(polymodal.PolymodalError, match="no VQA head"):
        model.answer(np.zeros((32, 32, 3), np.uint8), "what is it?")


def _qa_file(gallery):
    path = gallery / "finetune-qa.jsonl"
    with path.open("w") as f:
        for i, name in enumerate(NAMES):
            other = NAMES[(i + 5) % len(NAMES)]
            for q, a in (("what is in the picture?", name), (f"is this a {name}?", "yes"), (f"is this a {other}?", "no")):
                f.write(json.dumps({"image": f"{name}.jpg", "question": q, "answer": a}) + "\n")
    return path


def test_pretrain_then_finetune_vqa(pretrained, gallery, tmp_path, capsys):
    folder = pretrained[0] / "model"
    qa = _qa_file(gallery)
    base = load_fusion_encoder(folder)
    pre = base.trained_state()

    # loading for fine-tuning: every pretrained projection/fusion/ITM weight comes over, a fresh VQA head is added
    recipe = VQARecipe.from_dict({"qa": [str(qa)], "out": str(tmp_path / "unused"), "model": str(folder)})
    from polymodal.eval.vqa import read_qa

    set_seed(recipe.train.seed)  # as train_vqa does: the CLI run below starts from this very head
    model = build_vqa_model(recipe, read_qa(qa))
    state = model.trained_state()
    assert model.vqa_head is not None and set(model.answers) == {*NAMES, "yes", "no"}
    assert model.mlm_transform is None and model.mrm is None  # pretraining heads dropped
    carried = [k for k in pre if not k.startswith(("mlm_", "mrm.", "mask_token"))]
    assert carried and all(torch.equal(state[k], pre[k]) for k in carried)
    assert set(state) - set(pre) == {k for k in state if k.startswith("vqa_head.")}

    # fine-tune through the CLI with the projections and the fusion frozen
    out = tmp_path / "finetune"
    assert cli.main(["train", "vqa", "--qa", str(qa), "--val-qa", str(qa), "--model", str(folder), "--out", str(out),
                     "--freeze", "projections,fusion", "--epochs", "15", "--lr", "3e-3", "--batch-size", "6",
                     "--warmup-steps", "5", "--patience", "0", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["best"]["val/accuracy"] > 1 / 3  # the majority answer
    tuned = polymodal.load(str(out / "model"))
    after = tuned.trained_state()
    frozen = [k for k in after if k.startswith(("image_proj.", "image_pos", "text_proj.", "fusion."))]
    assert frozen and all(torch.equal(after[k], pre[k]) for k in frozen)
    assert not torch.equal(after["vqa_head.1.weight"], state["vqa_head.1.weight"])  # the fresh head trained
    assert tuned.answer(gallery / "cat.jpg", "what is in the picture?")["answer"] in tuned.answers


def test_continued_pretraining_freezes_parts_and_keeps_the_mrm_target(pretrained, pairs_file, tmp_path, capsys):
    folder = pretrained[0] / "model"
    pre = load_fusion_encoder(folder).trained_state()
    out = tmp_path / "more"
    result = cli_json(["train", "pretrain", "--pairs", str(pairs_file), "--val-pairs", str(pairs_file), "--model",
                       str(folder), "--out", str(out), "--objectives", "itm:1,mrm:0.5", "--freeze", "fusion,mrm",
                       "--epochs", "2", "--lr", "3e-3", "--batch-size", "16", "--warmup-steps", "1", "--patience", "0",
                       "--hard-k", "4", "--quiet"])
    assert (result["best"] or result)["epochs_run"] == 2
    after = load_fusion_encoder(out / "model").trained_state()
    frozen = [k for k in after if k.startswith(("fusion.", "mrm."))]
    assert frozen and all(torch.equal(after[k], pre[k]) for k in frozen)
    assert not torch.equal(after["itm.1.weight"], pre["itm.1.weight"])  # the rest trained
    # the folder's MRM head regresses features: asked to classify, the run is refused before any work
    assert cli.main(["train", "pretrain", "--pairs", str(pairs_file), "--model", str(folder), "--out",
                     str(tmp_path / "other"), "--mrm-target", "classify", "--quiet"]) == 2
    assert "mrm_target 'classify' contradicts" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
