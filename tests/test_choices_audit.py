"""What a mutation audit of multiple-choice VQA and the zero-shot weights watch showed slipping through: eval's
multiple-choice figures and warnings (unscorable_choices, row order, the feature cache, row_choices),
check_row_choices and warn_of, predict_choices of the fusion encoder (ITM scoring per row), the ONNX runtime and the
yes/no model, and WeightsWatch (module swaps, buffers, torch-free models). Each test was checked to fail on its
mutation; fakes stand in for the models wherever the logic is what is checked."""

from __future__ import annotations

import logging
import sys
import zlib

import numpy as np
import pytest
import torch

from polymodal.apps.zeroshot import PromptCache, WeightsWatch, ZeroShotMixin
from polymodal.data.answers import check_row_choices, choice_index, unique_choices, warn_of
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import as_rows, vqa_accuracy
from polymodal.export.fusion_runtime import OnnxFusionEncoder


# -- a fake VQA model: a fusion encoder without an ITM head, as eval sees it -------------------------------------------

class FakeVQA:
    """Knows VOCAB; answers open questions from OPEN[image] and picks among choices by PICK[image]; the image "bad"
    cannot be read."""

    name = "fake-vqa"
    VOCAB = ("cat", "dog", "red", "blue", "yes", "no")
    OPEN = {"a": "cat", "b": "dog", "c": "red", "d": "no", "e": "blue"}
    PICK = {"a": "cat", "b": "dog", "c": "red", "d": "no", "e": "blue"}

    def __init__(self):
        self.choice_calls = []

    def answer(self, image, question, choices=None, top_k=3):
        raise AssertionError("eval must not call answer() row by row")

    def predict(self, images, questions):
        if "bad" in images:
            raise PolymodalError("cannot read bad")
        return [(self.OPEN[i], 0.9) for i in images]

    def check_choices(self, choices):
        seen = unique_choices(choices)
        outside = [v for k, v in seen.items() if k not in self.VOCAB]
        if len(outside) == len(seen):
            raise PolymodalError(f"model {self.name!r} knows none of the choices ({', '.join(outside)})")
        return seen, f"these score 0: {', '.join(outside)}" if outside else ""

    def predict_choices(self, images, questions, choices):
        self.choice_calls.append(list(images))
        if "bad" in images:
            raise PolymodalError("cannot read bad")
        out = []
        for image, row in zip(images, choices):
            pick = self.PICK[image]
            out.append((pick, 0.8) if pick in row else (row[0], 0.1))
        return out


def row(image, answer, choices=None, question="what is it?"):
    return {"image": image, "question": question, "answer": answer, "choices": choices}


def test_eval_puts_open_and_chosen_answers_back_in_row_order_and_scores_choices_apart():
    rows = [row("a", "cat"),                        # open, right
            row("b", "dog", ["cat", "dog"]),        # choice, right
            row("c", "red"),                        # open, right
            row("d", "yes", ["yes", "no"]),         # choice, wrong (picks no)
            row("e", "blue", ["red", "blue"])]      # choice, right
    out = vqa_accuracy(FakeVQA(), rows)
    assert out["accuracy"] == pytest.approx(4 / 5) and out["count"] == 5
    assert out["multiple_choice_count"] == 3
    assert out["multiple_choice_accuracy"] == round(2 / 3, 4)  # the choice rows only, not all rows (4 decimals)
    assert out["multiple_choice_unscorable"] == 0 and out["unreadable"] == 0


def test_an_unreadable_multiple_choice_row_is_left_out_of_the_choice_figures(caplog):
    rows = [row("a", "cat"), row("b", "dog", ["cat", "dog"]), row("bad", "cat", ["cat", "dog"]),
            row("d", "no", ["yes", "no"])]
    with caplog.at_level(logging.WARNING):
        out = vqa_accuracy(FakeVQA(), rows)
    assert out["unreadable"] == 1 and out["count"] == 3
    assert out["multiple_choice_count"] == 2 and out["multiple_choice_accuracy"] == 1.0


def test_unscorable_rows_are_counted_per_row_and_said_once(caplog):
    model = FakeVQA()
    rows = [row("a", "kitten", ["kitten", "puppy"]), row("b", "kitten", ["kitten", "puppy"]),
            row("c", "red", ["red", "blue"])]
    with caplog.at_level(logging.WARNING):
        out = vqa_accuracy(model, rows)
    assert out["multiple_choice_unscorable"] == 2  # two rows, one list of choices
    assert out["multiple_choice_accuracy"] == round(1 / 3, 4) and out["accuracy"] == round(1 / 3, 4)
    assert "2 multiple-choice rows counted as wrong" in caplog.text
    assert model.choice_calls == [["c"]]  # only the scorable row is ranked


def test_a_note_on_choices_is_said_once_and_counts_the_other_lists(caplog):
    rows = [row("a", "cat", ["cat", "kitten"]), row("b", "cat", ["cat", "kitten"])]
    with caplog.at_level(logging.WARNING):
        vqa_accuracy(FakeVQA(), rows)
    notes = [r.getMessage() for r in caplog.records if "score 0" in r.getMessage()]
    assert notes == ["these score 0: kitten"]  # the same list in two rows is one list: no "(and in ...)"
    caplog.clear()
    rows.append(row("c", "red", ["red", "puppy"]))
    with caplog.at_level(logging.WARNING):
        vqa_accuracy(FakeVQA(), rows)
    notes = [r.getMessage() for r in caplog.records if "score 0" in r.getMessage()]
    assert notes == ["these score 0: kitten (and in 1 other lists of choices)"]


def test_choices_the_model_scores_fully_give_no_warning_at_all(caplog):
    rows = [row("a", "cat", ["cat", "dog"]), row("c", "red")]
    with caplog.at_level(logging.WARNING):
        out = vqa_accuracy(FakeVQA(), rows)
    assert out["accuracy"] == 1.0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_every_row_unscorable_is_one_error_naming_the_case():
    with pytest.raises(PolymodalError, match="knows none of the choices") as one:
        vqa_accuracy(FakeVQA(), [row("a", "kitten", ["kitten", "puppy"])])
    assert "of any row" not in str(one.value)  # one list: the model's own error
    with pytest.raises(PolymodalError, match="can score none of the choices of any row"):
        vqa_accuracy(FakeVQA(), [row("a", "kitten", ["kitten", "puppy"]), row("b", "lion", ["lion", "tiger"])])


def test_a_model_that_cannot_rank_choices_is_refused_by_name():
    class OpenOnly:
        name = "open-only"
        answer, predict, check_choices = FakeVQA.answer, FakeVQA.predict, FakeVQA.check_choices

    with pytest.raises(PolymodalError, match="open-only cannot rank given choices"):
        vqa_accuracy(OpenOnly(), [row("a", "cat"), row("b", "dog", ["cat", "dog"])])


def test_choices_match_the_answer_as_evaluation_compares_answers():
    (r,) = as_rows([row("a", "Two", ["2", "3"])])  # 'two' = '2' as VQA v2 compares them
    assert r.choices == ("2", "3") and r.answer == "two"
    with pytest.raises(PolymodalError, match="not among its choices"):
        as_rows([row("a", "four", ["2", "3"])])


# -- check_row_choices and warn_of ---------------------------------------------------------------------------------

def test_check_row_choices_checks_each_distinct_list_once_and_a_string_is_one_candidate():
    seen = []
    got = check_row_choices([["yes", "no"], "maybe", ("yes", "no")], 3, seen.append)
    assert got == [["yes", "no"], ["maybe"], ["yes", "no"]]
    assert seen == [["yes", "no"], ["maybe"]]
    with pytest.raises(PolymodalError, match="one list of candidate answers per row .*got str"):
        check_row_choices("yes,no", 6, seen.append)


def test_warn_of_warns_a_note_and_nothing_for_no_note(caplog):
    with caplog.at_level(logging.INFO):
        warn_of("")
        assert caplog.records == []
        warn_of("these choices score 0: maybe")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, "these choices score 0: maybe")]


# -- the ONNX runtime's choices, over stubbed logits ---------------------------------------------------------------

def onnx_fake(logits_table):
    """An OnnxFusionEncoder without graphs: logits() looks each image up (and records that it was called)."""
    m = object.__new__(OnnxFusionEncoder)
    m.name, m.version, m.answers = "fake-onnx", "0", ["yes", "no", "red"]
    m.answer_index = choice_index(m.answers)
    m.calls, m.match = [], None  # exported without an ITM head

    def batches(images, questions, batch_size=32):  # one batch: the grid is unused without a match graph
        m.calls.append(list(images))
        yield np.zeros((len(images), 1)), np.stack([logits_table[i] for i in images])

    m._batches = batches
    return m


def softmax(x):
    e = np.exp(np.asarray(x, np.float64) - max(x))
    return e / e.sum()


def test_onnx_predict_choices_ranks_each_row_by_its_own_logits():
    m = onnx_fake({"a": np.array([2.0, 0.5, -1.0], np.float32), "b": np.array([-1.0, 0.5, 2.0], np.float32)})
    got = m.predict_choices(["a", "b", "a"], ["q?"] * 3, [["No", "red"], ["no", "red"], ["no", "purple"]])
    assert got[0] == ("No", pytest.approx(softmax([0.5, -1.0])[0], rel=1e-5))  # softmax over the candidates
    assert got[1] == ("red", pytest.approx(softmax([0.5, 2.0])[1], rel=1e-5))
    assert got[2] == ("no", pytest.approx(softmax([2.0, 0.5, -1.0])[1], rel=1e-5))  # one outside: full vocabulary
    assert m.check_choices(["no", "purple"])[1] == (
        "fake-onnx (ONNX) has no ITM head to score choices outside its answers; these score 0: purple")
    assert m.check_choices(["no", "red"])[1] == ""


def test_onnx_predict_choices_refuses_choices_it_cannot_score_before_reading_an_image():
    m = onnx_fake({})
    with pytest.raises(PolymodalError, match="knows none of the choices"):
        m.predict_choices(["missing.jpg"], ["q?"], [["purple", "banana"]])
    assert m.calls == []


# -- the fusion encoder with an ITM head: candidates outside the vocabulary, row by row -----------------------------

@pytest.fixture(scope="module")
def itm_encoder():
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    torch.manual_seed(0)
    return FusionEncoder(FusionEncoderConfig(fusion="cross_attention", dim=16, dropout=0.0, itm_head=True,
                                             answers=["yes", "no", "red"])).eval()


def test_predict_choices_scores_outside_candidates_with_each_rows_image_and_question(itm_encoder):
    images = [np.full((64, 64, 3), (200, 30, 30), np.uint8), np.full((64, 64, 3), (20, 60, 220), np.uint8)]
    rows = [(images[0], "what colour is it?"), (images[1], "which colour is this?"), (images[1], "what colour is it?")]
    choices = ["blue", "green"]
    got = itm_encoder.predict_choices([i for i, _ in rows], [q for _, q in rows], [choices] * 3)
    alone = [itm_encoder.answer(i, q, choices=choices) for i, q in rows]
    for (answer, score), ref in zip(got, alone):
        assert answer == ref["answer"] and score == pytest.approx(ref["score"], rel=1e-5, abs=1e-7)
    # the case is one the mutations change: the rows differ, and each candidate's own text is scored
    assert len({round(r["score"], 6) for r in alone}) == 3
    assert len({round(s, 6) for _, s in alone[0]["alternatives"]}) == 2
    assert itm_encoder.check_choices(["red", "blue"])[1] == ""  # the ITM head scores blue: nothing to warn of
    assert itm_encoder.predict_choices([], [], []) == []


def test_eval_ranks_choices_from_the_feature_cache_as_predict_choices_does(itm_encoder, gallery, monkeypatch):
    from polymodal.train.vqa import cached_predictions

    images = [str(gallery / f"{name}.jpg") for name in ("cat", "coffee", "cat")]
    questions = ["what colour is it?", "is it red?", "is it red?"]
    choices = [["red", "no"], ["blue", "green"], None]  # inside the vocabulary, outside it (ITM), open
    got = cached_predictions(itm_encoder, images, questions, choices=choices)
    direct = itm_encoder.predict_choices(images[:2], questions[:2], choices[:2])
    for (answer, score), (ref_answer, ref_score) in zip(got[:2], direct):
        assert answer == ref_answer and score == pytest.approx(ref_score, rel=1e-2)  # float16 features in the cache
    open_answer, open_score = itm_encoder.predict(images[2:], questions[2:])[0]
    assert got[2][0] == open_answer and got[2][1] == pytest.approx(open_score, rel=1e-2)
    rows = [{"image": i, "question": q, "answer": a, "choices": c}
            for i, q, a, c in zip(images, questions, ["red", "blue", "yes"], choices)]
    first = vqa_accuracy(itm_encoder, rows)

    def no_tower(*args, **kwargs):
        raise AssertionError("the image tower ran again")

    monkeypatch.setattr(itm_encoder, "image_cache_input", no_tower)
    again = vqa_accuracy(itm_encoder, rows)  # every row, choices too, from the cache
    assert again == first and again["multiple_choice_count"] == 2
    assert again["multiple_choice_accuracy"] == pytest.approx(sum(a == r["answer"] for (a, _), r in zip(got[:2], rows)) / 2)


# -- WeightsWatch ----------------------------------------------------------------------------------------------------

def prompt_vector(prompt: str, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(prompt.encode())).normal(size=dim).astype(np.float32)


class TorchEmbedder(torch.nn.Module, ZeroShotMixin):
    """encode_text: a fixed vector per prompt through self.text (a Sequential, so a swap can be one level down)
    plus the buffer `shift`."""

    logit_scale = 10.0

    def __init__(self):
        super().__init__()
        self.text = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False))
        self.register_buffer("shift", torch.zeros(8))

    def encode_text(self, texts):
        with torch.no_grad():
            x = torch.from_numpy(np.stack([prompt_vector(t) for t in texts]))
            return (self.text(x) + self.shift).numpy()


def expected(model, labels):
    emb = model.encode_text([f"a photo of a {lab}." for lab in labels])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def step(module):
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    module(torch.ones(1, 8)).sum().backward()
    opt.step()


def test_a_swapped_module_is_watched_from_then_on():
    model, labels = TorchEmbedder(), ["cat", "dog"]
    model.label_embeddings(labels)
    model.text = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False))  # a fresh module for a fresh one
    np.testing.assert_allclose(model.label_embeddings(labels), expected(model, labels), atol=1e-5)
    assert model._prompts.misses == 2
    step(model.text)  # training the module swapped in
    np.testing.assert_allclose(model.label_embeddings(labels), expected(model, labels), atol=1e-5)
    assert model._prompts.misses == 3
    model.label_embeddings(labels)  # and then unchanged: cached again
    assert model._prompts.misses == 3


def test_a_module_swapped_one_level_down_and_an_edited_buffer_are_seen():
    model, labels = TorchEmbedder(), ["cat", "dog"]
    model.label_embeddings(labels)
    model.text[0] = torch.nn.Linear(8, 8, bias=False)  # the second level
    np.testing.assert_allclose(model.label_embeddings(labels), expected(model, labels), atol=1e-5)
    model.shift.add_(1.0)  # a buffer edited in place
    np.testing.assert_allclose(model.label_embeddings(labels), expected(model, labels), atol=1e-5)
    assert model._prompts.misses == 3


def test_a_plain_model_holding_torch_modules_is_watched():
    class Plain(ZeroShotMixin):
        logit_scale = 10.0

        def __init__(self):
            self.text = torch.nn.Linear(8, 8, bias=False)

        def encode_text(self, texts):
            with torch.no_grad():
                return self.text(torch.from_numpy(np.stack([prompt_vector(t) for t in texts]))).numpy()

    model, labels = Plain(), ["cat", "dog"]
    model.label_embeddings(labels)
    step(model.text)
    np.testing.assert_allclose(model.label_embeddings(labels), expected(model, labels), atol=1e-5)
    assert model._prompts.misses == 2


def test_without_torch_the_watch_never_sees_a_change(monkeypatch):
    class Numpy:
        def encode_text(self, texts):
            return np.stack([prompt_vector(t) for t in texts])

    cache = PromptCache(Numpy())
    monkeypatch.setitem(sys.modules, "torch", None)  # as in the torch-free ONNX runtime
    assert WeightsWatch(Numpy()).changed() is False
    cache.get(["cat"], ("a {}.",))
    cache.get(["cat"], ("a {}.",))
    assert cache.misses == 1


def test_a_module_freed_before_its_replacement_is_made_is_still_seen():
    # CPython often gives the new module the freed one's address: identity, not id(), tells them apart
    class LinearEmbedder(TorchEmbedder):
        def __init__(self):
            super().__init__()
            self.text = torch.nn.Linear(8, 8, bias=False)

    model, labels = LinearEmbedder(), ["cat", "dog"]
    model.label_embeddings(labels)
    for _ in range(3):
        model.text = None
        model.text = torch.nn.Linear(8, 8, bias=False)
        np.testing.assert_allclose(model.label_embeddings(labels), expected(model, labels), atol=1e-5)
    assert model._prompts.misses == 4


@pytest.mark.parametrize("rows", [[None], [5], [["yes", "no"], {"a": 1}]])
def test_a_row_whose_choices_are_not_a_list_is_one_clear_error(rows):
    with pytest.raises(PolymodalError, match=r"row \d's choices must be a list of candidate answers"):
        check_row_choices(rows, len(rows), lambda c: None)
