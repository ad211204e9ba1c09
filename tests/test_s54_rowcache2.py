"""`train contrastive` encodes a run's captions once, before the split (review s54): the train and validation
captions were cached as two lists drawn by --seed, so another seed missed the cache and encoded every caption again
(most of what a seed change cost once photos were reused). Now the run's distinct texts, sorted, are one list that no
seed changes, and each split indexes its rows: the same features bit for bit as a cold run's. `train vqa`'s
questions likewise."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
from polymodal.train import features, vqa
from polymodal.train.features import text_features
from test_s54_rowcache import _train  # noqa: E402 (tests/ is on the path)


@pytest.fixture()
def one_thread():
    """One torch thread: at more, a photo encoded alone may differ by ~1e-5 from the same photo in a batch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _same_weights(cold: dict, warm: dict) -> None:
    assert cold.keys() == warm.keys()
    for name in cold:
        np.testing.assert_array_equal(cold[name], warm[name], err_msg=name)


@pytest.fixture()
def encoded(monkeypatch):
    """The captions the text tower encodes for the cache, one list per call."""
    calls = []
    real = features._encode_texts
    monkeypatch.setattr(features, "_encode_texts", lambda model, captions, *a, **kw:
                        calls.append(list(captions)) or real(model, captions, *a, **kw))
    return calls


def test_the_texts_of_a_run_are_one_list_whatever_their_order(tmp_path, monkeypatch, encoded):
    from polymodal.train.features import TextRows

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    model = DualEncoder(DualEncoderConfig(embed_dim=16))
    texts = [f"a photo of {w}" for w in ("a dog", "two cats", "a red bus on a street", "snow")] + ["a photo of snow"]
    first = TextRows(texts).of(model, texts[:2], progress=False)
    shuffled = texts[::-1]
    random.Random(0).shuffle(shuffled)
    rows = TextRows(shuffled)
    again = rows.of(model, ["a photo of snow", "a photo of a dog"], progress=False)
    assert len(encoded) == 1 and len(encoded[0]) == 4  # once, each distinct text once
    whole = np.asarray(text_features(model, sorted(set(texts)), progress=False))
    np.testing.assert_array_equal(again[:], whole[[2, 0]])
    np.testing.assert_array_equal(first[:], whole[[0, 3]])
    # a text outside the run's list (a word swap drawn by the seed, --val-pairs' captions): its own list, as before
    other = rows.of(model, ["a photo of a cat", "a photo of snow"], progress=False)
    assert encoded[1:] == [["a photo of a cat", "a photo of snow"]]
    np.testing.assert_array_equal(other, text_features(model, ["a photo of a cat", "a photo of snow"], progress=False))
    assert isinstance(again.array, np.memmap)  # rows of the memory-mapped entry, not a copy


@pytest.fixture(scope="module")
def pairs_file(gallery, tmp_path_factory):
    """Two captions a photo, its plain one with a hard negative of the data's."""
    rows = [{"image": str(gallery / f"{name}.jpg"), "caption": caption, "negatives": [f"a drawing of {desc}"] * first}
            for name, (_, desc) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items()
            for first, caption in enumerate((f"a picture showing {desc}", desc))]
    path = tmp_path_factory.mktemp("s54-pairs2") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_another_seed_encodes_no_caption_and_trains_the_model_a_cold_cache_gives(pairs_file, tmp_path, monkeypatch,
                                                                                capsys, encoded, one_thread):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cold"))
    cold = _train(capsys, pairs_file, tmp_path / "cold-run", seed=1)
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "warm"))
    encoded.clear()
    _train(capsys, pairs_file, tmp_path / "seed0", seed=0)
    assert len(encoded) == 1 and any(t.startswith("a drawing of") for t in encoded[0])  # one list, negatives too
    encoded.clear()
    warm = _train(capsys, pairs_file, tmp_path / "warm-run", seed=1)
    assert encoded == []  # captions and the data's hard negatives: all in seed 0's one list
    assert len(list((tmp_path / "warm" / "features").glob("text-*.npy"))) == 1
    _same_weights(cold, warm)


def test_another_seed_encodes_no_question_and_trains_the_vqa_model_a_cold_cache_gives(gallery, tmp_path, monkeypatch,
                                                                                     one_thread):
    names = sorted({**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS})
    qa = tmp_path / "qa.jsonl"  # absolute paths: the session's gallery is shared, nothing is written beside it
    qa.write_text("".join(json.dumps({"image": str(gallery / f"{name}.jpg"), "question": q, "answer": a}) + "\n"
                          for i, name in enumerate(names)
                          for q, a in ((f"is this a {name}?", "yes"), (f"is this a {names[i - 3]}?", "no"),
                                       ("what is in the picture?", name if i % 2 else "something"))))
    asked = []
    real = vqa._question_states
    monkeypatch.setattr(vqa, "_question_states", lambda model, questions, *a, **kw:
                        asked.append(list(questions)) or real(model, questions, *a, **kw))

    def train(cache, out, seed):
        monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / cache))
        recipe = vqa.VQARecipe(qa=str(qa), out=str(tmp_path / out), val_fraction=0.3,
                               arch={"fusion": "concat", "dim": 16, "dropout": 0.0},
                               train={"epochs": 1, "warmup_steps": 1, "patience": 0, "seed": seed}, batch_size=8)
        vqa.train_vqa(recipe, progress=False)
        return load_file(str(tmp_path / out / "model" / "model.safetensors"))

    cold = train("cold", "cold-run", seed=1)
    asked.clear()
    train("warm", "seed0", seed=0)
    assert len(asked) == 1 and len(asked[0]) == len(set(asked[0])) == len(names) + 1  # train's and val's
    asked.clear()
    warm = train("warm", "warm-run", seed=1)
    assert asked == []
    _same_weights(cold, warm)


def test_questions_the_runs_list_lacks_keep_their_own_list(monkeypatch):
    """--val-qa's questions (a list no seed changes already): those all in the training list index it, others are
    their own list, as before."""
    asked = []
    monkeypatch.setattr(vqa, "question_features", lambda model, questions, progress=True: asked.append(
        list(questions)) or (np.zeros((len(questions), 2, 3), np.float16), np.ones(len(questions), np.int64)))
    run = {"is it red?": 0, "is it round?": 1}
    inside = vqa.EncodedQA([], ["a.jpg", "b.jpg"], ["is it round?"], np.array([0, 1]), np.array([0, 0]))
    data, states, _ = vqa.asked_features(None, run, inside, progress=False)
    assert data.questions == list(run) and data.row_question.tolist() == [1, 1] and len(states) == 2
    outside = vqa.EncodedQA([], ["a.jpg"], ["is it round?", "is it blue?"], np.array([0, 0]), np.array([1, 0]))
    data, states, _ = vqa.asked_features(None, run, outside, progress=False)
    assert data is outside and asked[-1] == ["is it round?", "is it blue?"] and len(states) == 2
