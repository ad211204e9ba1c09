"""Tests from the mutation audit of 6dc7eb2 (ONNX export of a VQA model's ITM head) and c392cda (the stop-33 Python API
fixes): each closes a mutation the earlier tests let through (see the audit report for the list)."""

from __future__ import annotations

import copy
import logging
import threading
import time

import numpy as np
import pytest
import torch

from polymodal.errors import PolymodalError


# --- fusion_export._match_parity: the ITM graph is checked on "QUESTION ANSWER" statements, row by row -------------


@pytest.fixture(scope="module")
def itm_model(easy_vqa):
    model = copy.deepcopy(easy_vqa)
    torch.manual_seed(0)
    model.add_itm_head()
    with torch.no_grad():
        model.itm[1].weight.mul_(20)  # spread the probabilities: a statement without its answer scores otherwise
    return model.eval()


@pytest.fixture(scope="module")
def qa_rows():
    pytest.importorskip("easy_vqa")
    import easy_vqa

    from polymodal.eval.vqa import QARow

    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    return [QARow(image=str(paths[i]), question=q, answer=a) for q, a, i in list(zip(questions, answers, image_ids))[:4]]


def _itm_probs(model, rows, texts):
    with torch.inference_mode():
        return np.array([float(torch.sigmoid(model.itm_logits(model.encode_images([r.image]),
                                                              *model.encode_questions([t]))))
                         for r, t in zip(rows, texts)], np.float32)


class _FakeMatchGraph:
    """An exported model whose match graph answers `scores` (PyTorch's own, or drifted) and records what it got."""

    def __init__(self, scores):
        self.scores, self.texts = scores, None

    def match_scores(self, images, texts):
        self.texts = list(texts)
        return np.asarray(self.scores, np.float32)


def test_match_parity_scores_each_question_with_its_answer(itm_model, qa_rows):
    from polymodal.export.fusion_export import _match_parity

    statements = [f"{r.question} {r.answer}" for r in qa_rows]
    want = _itm_probs(itm_model, qa_rows, statements)
    fake = _FakeMatchGraph(want)
    assert _match_parity(itm_model, fake, qa_rows) <= 1e-6
    assert fake.texts == statements  # the statements multiple choice scores, not the bare questions


def test_match_parity_fails_when_one_row_drifts(itm_model, qa_rows):
    """The worst row decides (a mean over rows would hide one drifting row among several)."""
    from polymodal.export.fusion_export import _match_parity

    want = _itm_probs(itm_model, qa_rows, [f"{r.question} {r.answer}" for r in qa_rows])
    drifted = want.copy()
    drifted[1] += 0.002  # over the 1e-3 tolerance on one row of four: a mean of 0.0005 would pass
    with pytest.raises(PolymodalError, match="ITM graph parity failed"):
        _match_parity(itm_model, _FakeMatchGraph(drifted), qa_rows)


# --- encoders/text.py: the transformers tokenizer is loaded once, under a lock -------------------------------------


def test_two_threads_asking_for_the_tokenizer_load_it_once(monkeypatch):
    transformers = pytest.importorskip("transformers")
    from polymodal.encoders.text import SentenceEncoder, minilm_path

    loads, inside, most = [], [0], [0]
    guard = threading.Lock()

    def slow_load(*args, **kwargs):  # the window in which a second thread would start a second load
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.2)
        loads.append(object())
        with guard:
            inside[0] -= 1
        return loads[-1]

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", slow_load)
    encoder = SentenceEncoder(minilm_path())
    encoder._hf_tokenizer = None
    got = [None, None]

    def ask(i):
        got[i] = encoder.tokenizer

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] == 1 and len(loads) == 1 and got[0] is got[1] is loads[0]


# --- train/trainer.py: a resumed run's first step runs at the new schedule's rate, in every parameter group ---------


class _Towered(torch.nn.Module):
    """A model with a pretrained-tower parameter group (tower_lr_scale) beside the head's."""

    def __init__(self):
        super().__init__()
        self.image_tower = torch.nn.Linear(3, 3)
        self.head = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.head(self.image_tower(x))


def _towered_trainer(out, epochs):
    from torch.utils.data import DataLoader, TensorDataset

    from polymodal.train.objectives import Objective
    from polymodal.train.trainer import TrainConfig, Trainer

    class Pull(Objective):
        def compute(self, model, batch):
            return ((model(batch[0]) - 1) ** 2).mean(), {}

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=4)
    config = TrainConfig(epochs=epochs, warmup_steps=1, patience=0, lr=1e-3, tower_lr_scale=0.1, log_every=1)
    return Trainer(_Towered(), {"pull": (Pull(), 1.0, loader)}, config, out, None, progress=False)


def test_a_resumed_finished_run_steps_at_the_new_rate_in_every_group(tmp_path):
    from polymodal.train.trainer import warmup_cosine

    _towered_trainer(tmp_path, epochs=2).fit()  # 4 steps: its schedule ends at ~0
    resumed = _towered_trainer(tmp_path, epochs=4)
    bases = sorted({g["lr"] for g in resumed.optimizer.param_groups})
    assert bases == pytest.approx([1e-4, 1e-3])  # two base rates: the tower's and the head's
    seen = []
    resumed.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
        sorted(g["lr"] for g in opt.param_groups)))
    resumed.fit(resume=True)
    factor = warmup_cosine(1, 8)(4)  # the step index the resumed run starts at, in the 8-step schedule
    assert seen[0] == pytest.approx([1e-4 * factor] * 2 + [1e-3 * factor] * 2)  # the rate the optimizer steps with, not just logs


# --- apps/zeroshot.py: one label whatever its case; the warning counts the rest ------------------------------------


def test_labels_are_one_label_under_full_case_folding():
    from polymodal.apps.zeroshot import merged_labels, same_label

    assert same_label(" Straße ") == same_label("STRASSE")  # casefold, not lower(): ß folds to ss
    assert merged_labels(["Straße", "STRASSE", "strasse "]) == ["'STRASSE' as 'Straße'", "'strasse ' as 'Straße'"]


def test_the_merged_label_warning_names_three_and_counts_the_rest(lite, gallery, caplog):
    photo = gallery / "cat.jpg"
    with caplog.at_level(logging.WARNING):
        lite.classify(photo, ["cat", "Cat", "CAT", "cat ", "rocket"])  # three merged: all named, none "more"
    assert "'cat ' as 'cat'" in caplog.text and "more" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        lite.classify(photo, ["cat", "Cat", "CAT", "cat ", " cat", "rocket"])
    assert "'cat ' as 'cat'; and 1 more" in caplog.text and "' cat'" not in caplog.text


# --- serve/app.py: the one-label warning counts case variants as one label, as the CLI does ------------------------


def test_the_server_says_case_variants_of_one_label_score_1(lite, gallery, db):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    with TestClient(create_app(lite, db)) as c:
        files = {"image": ("cat.jpg", (gallery / "cat.jpg").read_bytes(), "image/jpeg")}
        reply = c.post("/v1/classify", files=files, data={"labels": "Cat,cat "}).json()
    assert [x["label"] for x in reply["results"][0]["labels"]] == ["Cat"]
    assert reply["warnings"][0].startswith("with one label every image scores 1.0")
    assert reply["warnings"][1] == "labels differing only in case or spaces are one label: 'cat' as 'Cat'"


# --- export/fusion_runtime.py: no rows, no graph run -----------------------------------------------------------------


def test_no_rows_are_empty_answers_and_scores_and_run_no_graph():
    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    class Untouchable:
        def run(self, *args, **kwargs):
            raise AssertionError("no graph runs for no rows")

        def __call__(self, *args, **kwargs):
            raise AssertionError("nothing to transform or tokenize for no rows")

    m = object.__new__(OnnxFusionEncoder)
    m.name, m.answers = "fake-itm", ["yes", "no", "red"]
    m.grid = m.question = m.head = m.match = m.transform = m.tokenizer = Untouchable()
    got = m.match_scores([], [])
    assert got.shape == (0,) and got.dtype == np.float32
    assert m.logits([], []).shape == (0, 3) and m.predict([], []) == []  # as the PyTorch model's predict([], [])


def _itm_fake(batch_size_seen):
    """An OnnxFusionEncoder with an ITM head, without graphs: image i's grid tokens are all i, its match logit is the
    grid's value plus 10 x the number of the question the statement starts with ("qN ...")."""
    from polymodal.data.answers import choice_index
    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    m = object.__new__(OnnxFusionEncoder)
    m.name, m.version, m.answers = "fake-itm", "0", ["yes", "no"]
    m.answer_index = choice_index(m.answers)

    def batches(images, questions, batch_size=32):  # rows in batches, as the real one cuts them
        batch_size_seen.append(batch_size)
        for i in range(0, len(images), batch_size):
            part = images[i : i + batch_size]
            yield (np.stack([np.full((2, 3), float(x), np.float32) for x in part]),
                   np.zeros((len(part), 2), np.float32))

    class Tokens:
        def __call__(self, texts):
            return {"input_ids": np.array([[int(t.split()[0][1:])] for t in texts]),
                    "attention_mask": np.ones((len(texts), 1), np.int64)}

        def question_with_answer(self, question, answer):  # as FastTokenizer's for a text that fits
            return f"{question} {answer}"

    class Question:
        def run(self, _, feeds, options=None):
            return [feeds["input_ids"].astype(np.float32)[:, :, None]]

    class Match:
        def run(self, _, feeds, options=None):
            assert len(feeds["grid"]) == len(feeds["states"])  # one image row per statement
            return [(feeds["grid"][:, 0, 0] + 10 * feeds["states"][:, 0, 0]) / 100]

    m._batches, m.tokenizer, m.question, m.match = batches, Tokens(), Question(), Match()
    return m


def test_predict_choices_scores_each_rows_unknown_choices_on_its_own_image_and_question():
    """Rows of different images and questions across batches: each row's ITM statements use its own grid and its
    own question (test_onnx_itm's rows all share one image)."""
    sizes = []
    m = _itm_fake(sizes)
    images, questions = [0, 1, 2, 3, 4], [f"q{k} what is it?" for k in range(5)]
    got = m.predict_choices(images, questions, [["a purple blob"]] * 5, batch_size=2)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    want = [sigmoid((k + 10 * k) / 100) for k in range(5)]
    assert sizes == [2] and [a for a, _ in got] == ["a purple blob"] * 5
    assert np.allclose([s for _, s in got], want, atol=1e-6)


# --- models/yesno.py: encode_questions checks its batch size, as encode_images does ----------------------------------


def test_coco_yesno_encode_questions_refuses_a_zero_batch_size_first():
    from polymodal.models.yesno import YesNoModel

    model = object.__new__(YesNoModel)  # no weights needed: the arguments are checked before any is used
    with pytest.raises(PolymodalError, match="batch_size"):
        model.encode_questions("is it red?", batch_size=0)
    with pytest.raises(PolymodalError, match="batch_size"):
        model.encode_images("photo.jpg", batch_size=0)
