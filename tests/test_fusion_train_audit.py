"""Audit of the fusion modules, the fusion encoder and the VQA / pretraining data paths: behaviour the other test
files leave unchecked (found by mutation testing). Tiny tensors and stubs; one small fusion encoder for the
tests that need the towers."""

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from polymodal.data.pairs import Pair, PairSet
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import QARow
from polymodal.fusion import FUSIONS, FusionModule, FusionOutput, build_fusion, masked_mean, masked_softmax, register_fusion
from polymodal.fusion.layers import MultiHeadAttention, TransformerBlock
from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig, fused_token_modalities, load_fusion_encoder
from polymodal.train import pretrain, vqa
from polymodal.train.pretrain import (
    CaptionData, CaptionRows, PretrainRecipe, _encode_ids, _states, evaluate, evaluation_sets, maskable_words,
    masked_caption_ids, region_masks, split_pairs_by_image, tokenize_captions, whole_word_mask,
)
from polymodal.train.pretrain_objectives import IGNORE
from polymodal.train.vqa import (
    EpochShuffle, ImageQuestionSet, VQARecipe, _itm_texts, _mask, answer_vocabulary, build_vqa_model,
    predict_features, question_features, split_by_image,
)

from test_fusion import B, OUT, _one_thread, make, padded_inputs  # _one_thread: the autouse fixture, used by pytest


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# -- transformer pieces ----------------------------------------------------------------------------------------------


def test_attention_is_scaled_dot_product_per_head_with_the_key_mask():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2).eval()  # head width 4: scores are divided by sqrt(4) = 2
    x, ctx = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    key_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        out, weights = attn(x, ctx, key_mask)
        q, k, v = (lin(t).view(2, -1, 2, 4).transpose(1, 2) for lin, t in ((attn.q, x), (attn.k, ctx), (attn.v, ctx)))
        scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~key_mask[:, None, None, :], float("-inf"))
        ref = scores.softmax(-1)
        ref_out = attn.out((ref @ v).transpose(1, 2).reshape(2, 3, 8))
    close(weights, ref)
    close(out, ref_out)


@pytest.mark.parametrize("cross", [False, True])
def test_transformer_block_is_pre_norm_with_both_residuals(cross):
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, cross=cross).eval()
    x, ctx = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    key_mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool) if not cross else torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        y, _ = block(x, ctx if cross else None, key_mask)
        h = block.norm(x)
        attended, _ = block.attn(h, block.context_norm(ctx) if cross else h, key_mask)
        mid = x + attended
        ref = mid + block.ffn(block.ffn_norm(mid))
    close(y, ref)
    # the feed-forward width is part of every saved attention fusion's weights: 4 x dim
    assert block.ffn[0].out_features == 32 and block.ffn[3].in_features == 32


def test_masked_softmax_gives_an_all_padded_slice_zeros():
    scores = torch.randn(2, 4)
    mask = torch.tensor([[True, False, True, False], [False] * 4])
    w = masked_softmax(scores, mask)
    assert torch.equal(w[1], torch.zeros(4)) and w[0, 1] == 0 and w[0, 3] == 0
    close(w[0].sum(), torch.tensor(1.0))


# -- fusion modules ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["concat", "cross_attention", "co_attention", "single_stream", "gated"])
def test_integer_masks_mean_what_boolean_masks_mean(name):
    # a Hugging Face attention_mask is 0/1 integers: 1 = real token, exactly like True
    fusion = make(name)
    xs, masks = padded_inputs()
    with torch.no_grad():
        ref = fusion(xs, masks)
        out = fusion(xs, [m.long() for m in masks])
    close(out.pooled, ref.pooled)


def test_attention_pool_is_query_attention_plus_a_residual_feed_forward():
    fusion = make("attention_pool")
    xs, masks = padded_inputs()
    with torch.no_grad():
        out = fusion(xs, masks)
        tokens, ms = fusion.prepare(xs, masks)
        x = torch.cat([p(t) + e for p, t, e in zip(fusion.proj, tokens, fusion.type_embedding)], dim=1)
        pooled, _ = fusion.attn(fusion.query.expand(B, -1, -1), fusion.norm(x), torch.cat(ms, dim=1))
        ref = pooled + fusion.ffn(fusion.ffn_norm(pooled))
    close(out.pooled, ref[:, 0])


def test_single_stream_pools_the_cls_state_and_returns_the_token_states():
    fusion = make("single_stream")
    xs, masks = padded_inputs()
    seen = {}
    fusion.norm.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    with torch.no_grad():
        out = fusion(xs, masks)
        x = seen["x"]  # the final LayerNorm's output: [B, 1 + T, D], [CLS] first
        close(out.pooled, torch.tanh(fusion.pooler(x[:, 0])))
    mask = torch.cat(masks, dim=1)
    close(out.tokens, torch.where(mask[..., None], x[:, 1:], torch.zeros(())))
    assert out.pooled.abs().max() < 1  # the BERT pooler's tanh
    # [CLS] also attends to itself, so its weights over the tokens sum to less than 1
    total = sum(a.sum(-1) for a in out.attention)[:, 0]
    assert (total < 1 - 1e-4).all() and (total > 0).all()


def test_single_stream_positions_come_from_each_modalitys_own_table():
    fusion = make("single_stream").train()
    xs, masks = padded_inputs()
    (fusion(xs, masks).pooled * torch.randn(B, OUT, generator=torch.Generator().manual_seed(3))).sum().backward()
    grad = fusion.position_embedding.grad.abs().sum(-1)  # [M, max_len]
    assert (grad[0, :4] > 0).all() and (grad[1, :5] > 0).all()
    assert (grad[:, 5:] == 0).all()


def test_single_stream_accepts_exactly_max_len_tokens():
    xs, _ = padded_inputs()
    assert make("single_stream", max_len=5)(xs).pooled.shape == (B, OUT)


def test_late_fusion_starts_with_equal_weights_and_accepts_a_zero_weight():
    fusion = make("late", [6, 10, 4])
    close(fusion.weights(), torch.full((3,), 1 / 3))
    zero = make("late", weights=[1, 0])
    xs, masks = padded_inputs()
    with torch.no_grad():
        out = zero(xs, masks)
        preds, _ = zero.decisions(xs, masks)
    close(out.pooled, preds[:, 0])


def test_gated_fusion_is_a_gate_weighted_sum_of_tanh_projections():
    fusion = make("gated")
    xs, masks = padded_inputs()
    xs = [100 * x for x in xs]  # loud inputs: tanh keeps each h_i in [-1, 1]
    with torch.no_grad():
        out = fusion(xs, masks)
        tokens, ms = fusion.prepare(xs, masks)
        means = [masked_mean(t, m) for t, m in zip(tokens, ms)]
        h = torch.stack([torch.tanh(p(x)) for p, x in zip(fusion.proj, means)], dim=1)
        present = torch.stack([m.any(1) for m in ms], dim=1)
        z = masked_softmax(fusion.gate(torch.cat(means, -1)).view(h.shape), present[..., None], dim=1)
    close(out.pooled, (z * h).sum(1))
    close(out.modality_weights, z.mean(-1))
    assert out.pooled.abs().max() <= 1


def test_bilinear_fusion_sum_pools_factors_then_signed_square_root():
    fusion = make("bilinear", factors=3)
    xs, masks = padded_inputs()
    with torch.no_grad():
        out = fusion(xs, masks)
        tokens, ms = fusion.prepare(xs, masks)
        x, y = (masked_mean(t, m) for t, m in zip(tokens, ms))
        z = (fusion.u(x) * fusion.v(y)).view(B, OUT, 3).sum(-1)
        z = torch.sign(z) * (torch.sqrt(z.abs() + 1e-6) - 1e-3)
    close(out.pooled, nn.functional.normalize(z, dim=-1))
    assert (out.pooled < 0).any()  # signed: not every feature positive


def test_fusion_size_options_are_honoured():
    assert make("tensor", hidden=8, max_size=81).size == 81  # exactly max_size is allowed
    assert make("tensor", post_hidden=5).post[1].out_features == 5
    assert make("concat", hidden=5).mlp[0].out_features == 5


def test_register_fusion_replaces_a_redefined_class_of_the_same_name():
    def define():  # a re-run notebook cell: the same class, a new class object
        class RerunFusion(FusionModule):
            name = "test_rerun"

            def forward(self, inputs, masks=None):
                return FusionOutput(pooled=inputs[0])

        return RerunFusion

    try:
        first, second = define(), define()
        assert register_fusion(first) is first
        assert register_fusion(second) is second and FUSIONS["test_rerun"] is second
    finally:
        FUSIONS.pop("test_rerun", None)


# -- the fusion encoder ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    return FusionEncoder(FusionEncoderConfig(fusion="co_attention", dim=16, dropout=0.0, pixel_patches=True,
                                             itm_head=True, mlm_head=True, mrm_head="regress",
                                             answers=["yes", "no", "red"])).eval()


def _inputs(n_images=2, rows=2, width=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, 49, 1280 + 192, generator=g)
    states = torch.randn(rows, width, 384, generator=g)
    mask = torch.ones(rows, width, dtype=torch.bool)
    mask[-1, width // 2 :] = False
    return images, states, mask


def test_cross_attention_serves_mlm_by_default():
    # the fusion encoder's cross_attention default is query 1: the text tokens ask, so MLM is possible
    assert fused_token_modalities("cross_attention", {}) == ("text",)
    FusionEncoderConfig(fusion="cross_attention", mlm_head=True).validate()


def test_freeze_covers_every_attribute_of_a_part(enc):
    expected = {"image_proj": {"image_proj", "pixel_proj", "image_pos", "mask_token"},
                "projections": {"image_proj", "pixel_proj", "image_pos", "mask_token", "text_proj"},
                "text_proj": {"text_proj"}, "vqa": {"vqa_head"}, "itm": {"itm"}}
    for part, roots in expected.items():
        m = copy.deepcopy(enc)
        frozen = m.freeze(part)
        assert {n.split(".")[0] for n in frozen} == roots, part
        for name, p in m.named_parameters():
            if not name.startswith(("image_tower.", "text_tower.")):
                assert p.requires_grad == (name.split(".")[0] not in roots), name


def test_train_mode_keeps_both_towers_in_eval(enc):
    m = copy.deepcopy(enc).train()
    assert m.training and m.fusion.training
    assert not any(mod.training for mod in m.image_tower.modules())
    assert not any(mod.training for mod in m.text_tower.modules())


def test_masked_grid_cells_keep_their_position_and_pixels_count(enc):
    images, _, _ = _inputs()
    region = torch.zeros(2, 49, dtype=torch.bool)
    region[0, [3, 7]] = True
    with torch.no_grad():
        tokens = enc.image_tokens(images, region_mask=region)
        close(tokens[0, 3], enc.mask_token + enc.image_pos[3])
        close(tokens[0, 7], enc.mask_token + enc.image_pos[7])
        close(tokens[1], enc.image_tokens(images)[1])
        other = images.clone()
        other[..., 1280:] += 1  # other raw pixels, the same tower features
        assert not torch.allclose(enc.image_tokens(other), enc.image_tokens(images))


def test_mlm_logits_carry_the_trained_word_bias(enc):
    m = copy.deepcopy(enc)
    images, states, mask = _inputs()
    positions = torch.zeros_like(mask)
    positions[:, 1] = True
    with torch.no_grad():
        m.mlm_bias[1234] = 1e4
        logits = m.mlm_logits(images, states, mask, positions)
    assert logits.shape == (2, m.word_embeddings.shape[0]) and (logits.argmax(-1) == 1234).all()


def test_cross_attention_returns_the_query_modalitys_tokens(enc):
    m = copy.deepcopy(enc)
    images, states, mask = _inputs()
    positions = torch.zeros_like(mask)
    positions[:, 0] = True
    region = torch.zeros(2, 49, dtype=torch.bool)
    region[:, 4] = True
    with torch.no_grad():
        m.fusion = build_fusion("cross_attention", [16, 16], 16, query=1)  # text asks
        assert m.mlm_logits(images, states, mask, positions).shape[0] == 2
        with pytest.raises(PolymodalError, match="no fused image tokens"):
            m.mrm_predictions(images, states, mask, region)
        m.fusion = build_fusion("cross_attention", [16, 16], 16, query=0)  # the grid asks
        assert m.mrm_predictions(images, states, mask, region).shape == (2, 1280)
        with pytest.raises(PolymodalError, match="no fused text tokens"):
            m.mlm_logits(images, states, mask, positions)


def test_mrm_targets_follow_each_rows_image(enc):
    images, _, _ = _inputs()
    row_image = torch.tensor([1, 0, 1])
    region = torch.zeros(3, 49, dtype=torch.bool)
    region[:, 5] = True
    region[2, 6] = True
    targets = enc.mrm_targets(images, region, row_image)
    expected = torch.stack([images[1, 5], images[0, 5], images[1, 5], images[1, 6]])[:, :1280]
    close(targets, expected)
    m = copy.deepcopy(enc)
    m.config.mrm_head = "classify"
    with torch.no_grad():
        classes = m.mrm_targets(images, region, row_image)
        close(classes, m.image_tower.net._fc(expected).float())
    assert classes.shape == (4, 1000)


@pytest.fixture(scope="module")
def photo(enc):
    return enc.encode_images([np.full((64, 64, 3), 120, np.uint8)])


def test_choices_inside_keep_the_full_vocabulary_probability_and_outside_get_the_itm_sigmoid(enc, photo):
    logits = torch.tensor([2.0, 0.5, -1.0])  # yes, no, red
    with torch.no_grad():
        scores = dict(enc._rank_choices(logits, photo, "what colour is it?", ["red", "blue"]))
        states, mask = enc.encode_questions(["what colour is it? blue"])
        itm = torch.sigmoid(enc.itm_logits(photo, states, mask))[0]
    assert scores["red"] == pytest.approx(float(logits.softmax(-1)[2]), rel=1e-5)
    assert scores["blue"] == pytest.approx(float(itm), rel=1e-5)
    m = copy.deepcopy(enc)
    m.itm = None
    with pytest.raises(PolymodalError, match="knows none of the choices"):
        m._rank_choices(logits, photo, "what colour is it?", ["blue", "green"])


def test_answer_returns_top_k_alternatives(enc):
    img = np.full((64, 64, 3), 120, np.uint8)
    assert len(enc.answer(img, "is it red?", top_k=1)["alternatives"]) == 1
    assert len(enc.answer(img, "is it red?", choices=["yes", "no", "red"], top_k=2)["alternatives"]) == 2


def test_logits_for_maps_rows_to_their_images(enc):
    images, states, mask = _inputs(n_images=2, rows=3)
    row_image, row_question = torch.tensor([1, 0, 1]), torch.tensor([0, 1, 2])
    got = enc.logits_for(images, states, mask, row_image, row_question, batch_size=2)
    with torch.no_grad():
        expected = enc.vqa_logits(images, states, mask, row_image)
    close(got, expected, atol=1e-4)


def test_explain_averages_the_attention_of_the_real_question_tokens(enc):
    m = copy.deepcopy(enc)
    m.fusion = build_fusion("cross_attention", [16, 16], 16, query=1).eval()
    img = np.full((64, 64, 3), 120, np.uint8)
    heat = m.explain(img, "what colour is the ball?")
    with torch.no_grad():
        states, mask = m.encode_questions(["what colour is the ball?"])
        att = m.fuse(m.encode_images([img]), states, mask).attention[0][0]  # [Tq, 49]
        ref = att[mask[0]].mean(0)
    np.testing.assert_allclose(heat, (ref / ref.max()).reshape(7, 7).numpy(), atol=1e-5)


def test_heads_added_and_dropped_survive_save_and_load(enc, tmp_path):
    m = copy.deepcopy(enc)
    m.drop_pretraining_heads()
    m.itm, m.config.itm_head = None, False
    m.add_vqa_head(["cat", "dog"])
    assert m.answer_index == {"cat": 0, "dog": 1}
    with pytest.raises(PolymodalError, match="without duplicates"):
        m.add_vqa_head(["cat", "cat"])
    m.add_itm_head()
    itm = m.itm
    m.add_itm_head()
    assert m.itm is itm  # a trained ITM head is never replaced
    state = m.trained_state()
    assert not any(k.startswith(("image_tower.", "text_tower.", "mlm_", "mrm.", "mask_token")) for k in state)
    again = load_fusion_encoder(m.save(tmp_path / "m"))
    assert again.answers == ["cat", "dog"] and again.mlm_transform is None and again.mrm is None
    assert again.itm is not None and not again.config.mlm_head and again.config.mrm_head == ""
    images, states, mask = _inputs()
    with torch.no_grad():
        close(again.vqa_logits(images, states, mask), m.eval().vqa_logits(images, states, mask))
        close(again.itm_logits(images, states, mask), m.itm_logits(images, states, mask))


# -- VQA training data -----------------------------------------------------------------------------------------------


def _qa(answers, image="a.jpg"):
    return [QARow(image, f"q{i}", a) for i, a in enumerate(answers)]


def test_answer_vocabulary_counts_ties_and_limits():
    rows = _qa(["b", "a", "c", "c", "b", "a", "d"])
    assert answer_vocabulary(rows) == ["a", "b", "c", "d"]  # ties alphabetical
    assert answer_vocabulary(rows, min_count=2) == ["a", "b", "c"]  # seen min_count times is enough
    assert answer_vocabulary(rows, max_answers=2) == ["a", "b"]
    rows += _qa(["z"] * 3)
    assert answer_vocabulary(rows, max_answers=1) == ["z"]
    with pytest.raises(PolymodalError, match="every training question has the same answer \\('yes'\\)"):
        answer_vocabulary(_qa(["yes"] * 5))  # nothing to learn: it would answer yes to everything
    with pytest.raises(PolymodalError, match="only 'a' occurs 2\\+ times"):  # the same, through the count filter
        answer_vocabulary(_qa(["a", "a", "b"]), min_count=2)


def test_split_by_image_always_keeps_a_training_image():
    rows = [QARow(f"{i}.jpg", "q", "a") for i in range(4)]
    train, val = split_by_image(rows, 1.0)
    assert len(train) == 1 and len(val) == 3
    pairs = PairSet.from_pairs([Pair(f"{i}.jpg", f"c{i}") for i in range(4)])
    train_pairs, val_pairs = split_pairs_by_image(pairs, 1.0)
    assert len(train_pairs.images) == 1 and len(val_pairs.images) == 3


def test_image_question_set_trains_the_first_answer_and_labels_itm_rows():
    feats = np.arange(3, dtype=np.float16)[:, None, None] * np.ones((3, 2, 4), np.float16)
    q_states = np.arange(4, dtype=np.float16)[:, None, None] * np.ones((4, 2, 384), np.float16)
    row_image, row_question = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 3])
    row_target = np.array([0, -1, 0, 1])  # answer 0 is the most frequent one; -1: outside the vocabulary
    itm_states = np.arange(8, dtype=np.float16)[:, None, None] * np.ones((8, 2, 384), np.float16)
    itm = (itm_states, np.full(8, 2), np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7]))
    plain = ImageQuestionSet(feats, q_states, np.full(4, 2), row_image, row_question, row_target)
    assert plain.rows == 3 and plain.collate([0, 1, 2]).targets.tolist() == [0, 0, 1]  # no ITM: row 1 cannot train
    data = ImageQuestionSet(feats, q_states, np.full(4, 2), row_image, row_question, row_target, itm)
    assert data.rows == 4 and len(data) == 3  # with an ITM head the row outside the vocabulary trains it
    batch = data.collate([0, 1, 2])
    assert batch.targets.tolist() == [0, -1, 0, 1]
    assert batch.itm_labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert batch.itm_states[:, 0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # matching texts first


def test_rows_outside_the_vocabulary_train_the_itm_head_only():
    import torch

    from polymodal.train.vqa_objective import VQABatch, VQAObjective

    class Model:  # records which rows reach each head
        def vqa_logits(self, images, states, mask, row_image):
            self.vqa_rows = states[:, 0, 0].tolist()
            return torch.stack([states[:, 0, 0], -states[:, 0, 0]], 1)

        def itm_logits(self, images, states, mask, row_image):
            self.itm_rows = len(states)
            return torch.zeros(len(states))

    states = torch.arange(3.0)[:, None, None].expand(3, 2, 4)
    batch = VQABatch(torch.tensor([0, -1, 1]), torch.zeros(3, dtype=torch.long), torch.zeros(1, 2, 4), states,
                     torch.ones(3, 2, dtype=torch.bool), states.repeat(2, 1, 1), torch.ones(6, 2, dtype=torch.bool),
                     torch.tensor([1.0, 1, 1, 0, 0, 0]), torch.zeros(6, dtype=torch.long))
    model = Model()
    loss, metrics = VQAObjective(itm_weight=1.0).compute(model, batch)
    assert model.vqa_rows == [0.0, 2.0] and model.itm_rows == 6
    assert metrics["accuracy"] == 0.5 and torch.isfinite(loss)
    only_outside = batch._replace(targets=torch.tensor([-1, -1, -1]))
    loss, metrics = VQAObjective(itm_weight=1.0).compute(model, only_outside)  # a batch of such rows: ITM loss alone
    assert "vqa_loss" not in metrics and "accuracy" not in metrics
    assert float(loss) == pytest.approx(metrics["itm_loss"]) and metrics["itm_loss"] == pytest.approx(math.log(2))


def test_answers_outside_the_vocabulary_are_also_wrong_answers_for_itm():
    """Else every "question OUTSIDE-ANSWER" text is a match, and the head learns that unknown answers always match."""
    rows = [QARow("a.jpg", f"q{i}", a) for i, a in enumerate(["yes", "no", "circle"] * 20)]
    texts, pos, neg = _itm_texts(rows, ["yes", "no"], seed=0)
    assert any(texts[n].endswith(" circle") for n in neg)
    assert all(texts[p] != texts[n] for p, n in zip(pos, neg))


def test_itm_negative_answer_is_never_the_rows_own_answer():
    rows = [QARow("a.jpg", f"q{i % 3}", a) for i, a in enumerate(["yes", "no", "red", "blue", "yes", "no"] * 5)]
    texts, pos, neg = _itm_texts(rows, ["yes", "no", "red", "blue"], seed=0)
    assert all(texts[p] != texts[n] for p, n in zip(pos, neg))
    assert all(texts[p] == f"{r.question} {r.answer}" for r, p in zip(rows, pos))


class _StubModel:
    def __init__(self, answers=("old",), itm=None):
        self.answers, self.itm, self.config, self.calls = list(answers), itm, "config", []

    def drop_pretraining_heads(self):
        self.calls.append("drop")

    def add_vqa_head(self, answers):
        self.calls.append(("head", list(answers)))
        self.answers = list(answers)

    def add_itm_head(self):
        self.calls.append("itm")
        self.itm = "itm"

    def freeze(self, parts):
        self.calls.append(("freeze", list(parts)))
        return []


def test_build_vqa_model_from_a_folder_honours_new_head_and_itm(monkeypatch, tmp_path):
    stub = _StubModel()
    monkeypatch.setattr(vqa, "continued_folder", lambda path, task: Path(path))
    monkeypatch.setattr(vqa, "load_fusion_encoder", lambda path: stub)
    rows = _qa(["yes", "no", "yes"])
    recipe = VQARecipe(qa=["qa.jsonl"], out=str(tmp_path), model="folder", new_head=True, itm_weight=0.5)
    assert build_vqa_model(recipe, rows) is stub
    assert stub.calls == ["drop", ("head", ["yes", "no"]), "itm"]


def test_epoch_shuffle_changes_with_the_epoch_only():
    s = EpochShuffle(20, seed=1)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert sorted(second) == list(range(20)) and second != first and list(s) == second


def test_predict_features_covers_every_image_chunk(enc):
    images, states, mask = _inputs(n_images=3, rows=2)
    feats = images.numpy().astype(np.float16)
    q_states, q_len = states.numpy().astype(np.float16), mask.sum(1).numpy()
    row_image, row_question = np.array([0, 1, 2, 2, 0]), np.array([0, 1, 0, 1, 1])
    best, prob = predict_features(enc, feats, q_states, q_len, row_image, row_question, images_per_batch=2)
    with torch.no_grad():
        st, m = vqa._gather_questions(q_states, q_len, row_question)
        p = enc.vqa_logits(torch.from_numpy(feats.astype(np.float32)), st, m, torch.from_numpy(row_image)).softmax(-1)
    assert best.tolist() == p.argmax(-1).tolist()
    np.testing.assert_allclose(prob, p.max(-1).values.numpy(), atol=1e-5)


def test_question_lengths_are_the_real_token_counts(enc):
    questions = ["hi?", "what colour is the ball on the left of the table?"]
    states, lengths = question_features(enc, questions, progress=False)
    _, mask = enc.text_cache_input(questions)
    assert lengths.tolist() == mask.sum(1).tolist() and lengths[0] < states.shape[1]
    assert _mask(np.array([2, 0, 3]), 3).tolist() == [[True, True, False], [False] * 3, [True] * 3]


# -- pretraining data ------------------------------------------------------------------------------------------------


def test_maskable_words_keep_digits_and_never_join_across_a_special_token():
    special = {"[CLS]", "[SEP]"}
    assert maskable_words(["[CLS]", "2", "dogs", "[SEP]"], special) == [[1], [2]]
    assert maskable_words(["[CLS]", "dog", "[SEP]", "##s"], special) == [[1], [3]]


def test_whole_word_mask_draws_each_word_at_most_once():
    special = {"[CLS]", "[SEP]"}
    tokens = ["[CLS]", "a", "big", "red", "ball", "rolls", "away", "[SEP]"]
    for seed in range(5):
        assert whole_word_mask(tokens, 1.0, np.random.default_rng(seed), special) == [1, 2, 3, 4, 5, 6]


def test_region_masks_mask_at_least_one_cell_and_differ_per_row():
    few = region_masks(5, 49, 0.001, np.random.default_rng(0))
    assert (few.sum(1) == 1).all()
    many = region_masks(20, 49, 0.15, np.random.default_rng(0))
    assert len({tuple(np.flatnonzero(r)) for r in many}) > 1


def test_mlm_variants_mask_different_words(enc):
    captions = ["a man in a red shirt rides a bike down the busy street next to a tall building"] * 2
    rows, targets = masked_caption_ids(enc, captions, variants=2, rate=0.15, seed=0)
    assert rows[0] != rows[2] or rows[1] != rows[3]  # copy 1 of a caption is not copy 0 again
    assert rows[0] != rows[1]  # and two captions get their own draws


def test_cached_caption_states_do_not_depend_on_their_batch_mates(enc):
    ids = tokenize_captions(enc, ["a dog", "a very long caption about a brown dog running on the sunny beach"])
    both, lengths = _encode_ids(enc, ids, progress=False)
    alone, _ = _encode_ids(enc, ids[:1], progress=False)
    n = int(lengths[0])
    np.testing.assert_allclose(both[0, :n].astype(np.float32), alone[0, :n].astype(np.float32), atol=2e-2)
    assert (both[0, n:] == 0).all()


def _toy_caption_data(**kw):
    pairs = PairSet.from_pairs([Pair(f"{i}.jpg", f"caption {i} {j}") for i in range(4) for j in range(2)])
    feats = np.broadcast_to(np.arange(4, dtype=np.float16)[:, None, None], (4, 49, 1280))
    states = np.broadcast_to(np.arange(8, dtype=np.float16)[:, None, None], (8, 3, 384))
    return CaptionData(pairs, feats, states, np.array([3, 1, 2, 3, 3, 3, 3, 3]), **kw)


def test_caption_masks_match_the_caption_lengths():
    data = _toy_caption_data()
    states, mask = _states(data.states, data.lengths, np.array([1, 2, 0]))
    assert mask.sum(1).tolist() == [1, 2, 3] and states.shape == (3, 3, 384)


def _negative_captions(rows, epochs=40):
    out = []
    for epoch in range(epochs):
        rows.set_epoch(epoch)
        out.append(rows.collate(list(range(8))).states[8:16, 0, 0].long())
    return torch.stack(out)  # [epochs, 8]


def test_hard_fraction_is_the_share_of_mined_negatives():
    data = _toy_caption_data(hard_captions=np.array([[2], [4], [6], [0]]),
                             hard_images=np.array([[3], [3], [0], [0], [1], [1], [2], [2]]))
    mined = torch.tensor([(2 * (c // 2) + 2) % 8 for c in range(8)])
    share = float((_negative_captions(CaptionRows(data, "itm", hard=0.25)) == mined).float().mean())
    assert 0.25 < share < 0.5  # 1/4 + 3/4 * 1/6 = 0.375 (uniform hits the mined caption 1 time in 6)
    random = _negative_captions(CaptionRows(data, "itm", hard=0.0), epochs=4)
    assert not all(torch.equal(random[0], r) for r in random[1:])  # drawn anew each epoch


def test_hard_negatives_come_from_the_whole_mined_list():
    data = _toy_caption_data(hard_captions=np.array([[2, 4], [4, 6], [6, 0], [0, 2]]),
                             hard_images=np.array([[3, 2]] * 2 + [[0, 3]] * 2 + [[1, 0]] * 2 + [[2, 1]] * 2))
    negatives = _negative_captions(CaptionRows(data, "itm", hard=1.0), epochs=20)
    assert set(negatives[:, 0].tolist()) == {2, 4}  # image 0's two mined captions, both used


def test_evaluation_uses_all_hard_negatives_and_weights_mlm_by_masked_words(monkeypatch):
    data = _toy_caption_data(hard_captions=np.array([[2], [4], [6], [0]]),
                             hard_images=np.array([[3], [3], [0], [0], [1], [1], [2], [2]]))
    sets = evaluation_sets(data, ["itm", "mrm"])
    assert sets["itm_hard"].hard == 1.0 and sets["itm_random"].hard == 0.0 and set(sets) == {"itm_hard", "itm_random", "mrm"}

    class Rows:
        def __init__(self, kind, batches):
            self.kind, self.batches = kind, batches  # per batch of 2 rows: (masked words, metrics)

        def __len__(self):
            return 2 * len(self.batches)

        def collate(self, idx):
            masked, metrics = self.batches[idx[0] // 2]
            targets = torch.full((2, 4), IGNORE)
            targets.view(-1)[:masked] = 1
            return SimpleNamespace(row_image=torch.zeros(2), mlm_targets=targets, metrics=metrics)

    class Fake:
        def compute(self, model, batch):
            return None, batch.metrics

    for kind in ("itm", "mlm"):
        monkeypatch.setitem(pretrain.OBJECTIVES, kind, Fake)
    rows = {"itm_hard": Rows("itm", [(0, {"itm_loss": 0.5})]), "itm_random": Rows("itm", [(0, {"itm_loss": 0.2})]),
            "mlm": Rows("mlm", [(3, {"mlm_loss": 1.0}), (1, {"mlm_loss": 3.0})])}
    out = evaluate(SimpleNamespace(eval=lambda: None), rows, {"itm": 1.0, "mlm": 2.0}, batch_size=2)
    assert out["val/mlm_loss"] == pytest.approx(1.5)  # (3 * 1.0 + 1 * 3.0) / 4 masked words
    assert out["val/itm_loss_hard"] == 0.5 and out["val/itm_loss_random"] == 0.2
    assert out["val/score"] == pytest.approx(-(0.5 + 2 * 1.5))  # higher is better; ITM counts its hard loss


def test_build_model_gives_the_heads_the_objectives_need(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrain, "FusionEncoder", lambda arch: SimpleNamespace(config=arch))
    recipe = PretrainRecipe(pairs=["p.jsonl"], out=str(tmp_path), objectives={"itm": 1.0, "mrm": 1.0},
                            mrm_target="classify")
    arch = pretrain.build_model(recipe).config
    assert recipe.arch is arch  # train_config.json records what was built
    assert arch.itm_head and not arch.mlm_head and arch.mrm_head == "classify"

    stub = _StubModel()
    stub.mlm_transform, stub.mrm = object(), object()
    monkeypatch.setattr(pretrain, "continued_folder", lambda path, task: Path(path))
    monkeypatch.setattr(pretrain, "load_fusion_encoder", lambda path: stub)
    recipe = PretrainRecipe(pairs=["p.jsonl"], out=str(tmp_path), model="folder", objectives={"itm": 1.0, "mlm": 1.0})
    assert pretrain.build_model(recipe) is stub and stub.calls == ["itm"]


@pytest.mark.parametrize("setting", [{"mrm_rate": 0.0}, {"mrm_rate": 1.5}, {"mlm_rate": 0.0}])
def test_pretrain_rates_are_checked(setting, tmp_path):
    with pytest.raises(PolymodalError, match="mlm_rate and mrm_rate"):
        PretrainRecipe(pairs=["p.jsonl"], out=str(tmp_path), **setting).validate()


def test_linear_head_has_no_bias_and_attention_pool_positions_learn():
    from polymodal.models.heads import AttentionPoolHead, LinearHead

    assert set(LinearHead(4, 3).state_dict()) == {"proj.weight"}  # the saved format of linear-head models
    torch.manual_seed(0)
    head = AttentionPoolHead(16, 8, heads=4, grid=9)
    nn.init.normal_(head.attn.out_proj.weight)  # as after some training
    head(torch.randn(2, 9, 16)).pow(2).sum().backward()
    assert head.pos.grad.abs().sum() > 0
    assert not math.isnan(float(head.pos.grad.sum()))


def test_pixel_patches_follow_the_grid_cells_row_by_row(enc):
    pixels = torch.zeros(1, 3, 224, 224)
    pixels[0, :, 0:32, 32:64] = 1.0  # the grid cell in row 0, column 1
    patches = enc.image_cache_input(pixels)[0, :, 1280:]  # [49, 3 * 8 * 8]
    close(patches[1], torch.ones(192))
    assert int((patches.abs().sum(-1) > 0).sum()) == 1  # no other cell (row 1, column 0 included) sees it


def test_mlm_never_masks_special_tokens_and_pads_with_ignore(enc):
    captions = ["a dog", "two cats sleep on a warm red sofa"]
    rows, targets = masked_caption_ids(enc, captions, variants=1, rate=1.0, seed=0)
    for row, target in zip(rows, targets):
        n = len(row)
        assert target[0] == IGNORE and target[n - 1] == IGNORE  # [CLS] and [SEP] stay
        assert (target[1 : n - 1] != IGNORE).all()  # rate 1: every word is masked
        assert (target[n:] == IGNORE).all()  # padding is never a target


def test_whole_word_mask_rounds_the_word_count():
    tokens = ["[CLS]", *[f"w{i}" for i in range(10)], "[SEP]"]
    rng = np.random.default_rng(0)
    assert len(whole_word_mask(tokens, 0.15, rng, {"[CLS]", "[SEP]"})) == 2  # round(1.5) = 2 words


def test_zero_images_control_run_sees_no_image():
    plain = CaptionRows(_toy_caption_data(), "mrm").collate([2, 5])
    zero = CaptionRows(_toy_caption_data(), "mrm", zero_images=True).collate([2, 5])
    assert (plain.images != 0).any() and (zero.images == 0).all()
    assert torch.equal(plain.states, zero.states)
