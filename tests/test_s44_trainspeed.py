"""Training speed (stop 44): work done once instead of again, with the same results."""

import numpy as np
import pytest
import torch

from polymodal.data.samples import sample_photos
from polymodal.eval.zeroshot import zeroshot_accuracy
from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
from polymodal.train.contrastive import _with_zeroshot
from polymodal.train.features import text_features


class _LengthTower:
    """A text tower that records its batches: feature = (length of the text, 1)."""

    def __init__(self):
        self.batches = []

    def __call__(self, texts):
        self.batches.append(list(texts))
        return torch.tensor([[float(len(t)), 1.0] for t in texts])


class _StubModel:
    text_cache_signature = "s44-trainspeed-length-order"

    def __init__(self):
        self.text_tower = _LengthTower()


def test_text_features_are_encoded_in_batches_of_similar_length():
    # a batch is padded to its longest caption: cut in the captions' order, each batch ran ~1.9x its tokens on
    # Flickr8k (benchmarks/train_caching.py: 1.5x less CPU in length order)
    captions = ["a much longer caption than the rest", "dog", "a medium caption", "cat", "a long caption here", "ox"]
    model = _StubModel()
    out = text_features(model, captions, batch_size=2, progress=False)
    assert [sorted(map(len, b)) == list(map(len, b)) for b in model.text_tower.batches] == [True] * 3
    assert [len(t) for b in model.text_tower.batches for t in b] == sorted(map(len, captions))
    np.testing.assert_array_equal(out[:, 0], [len(c) for c in captions])  # each row is its own caption's, in order


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labelled")
    photos = list(sample_photos().items())[:4]
    images = []
    from PIL import Image

    for name, (arr, _) in photos:
        Image.fromarray(arr).save(folder / f"{name}.jpg")
        images.append(folder / f"{name}.jpg")
    return images, ["animal", "thing", "animal", "thing"][: len(images)]


def test_zeroshot_score_after_each_epoch_runs_the_towers_once(labelled):
    # only the heads train: the towers' outputs on the labelled photos and the prompts are kept from the first
    # epoch (each epoch ran both towers over all of them again, several times the epoch's own training)
    images, labels = labelled
    torch.manual_seed(0)
    model = DualEncoder(DualEncoderConfig(embed_dim=32)).eval()
    photos, texts = [], []
    spatial, tower = model.image_tower.spatial, model.text_tower.forward
    model.image_tower.spatial = lambda pixels: photos.append(len(pixels)) or spatial(pixels)
    model.text_tower.forward = lambda batch: texts.append(len(batch)) or tower(batch)
    score = _with_zeroshot(None, images, labels)
    heads = [p for n, p in model.named_parameters() if n.startswith(("image_head", "text_head"))]
    kept = []
    for epoch in range(3):
        with torch.no_grad():
            kept.append(score(model))
            for p in heads:  # what an epoch's optimizer steps do
                p.add_(torch.randn_like(p) * 0.05)
    assert sum(photos) == len(images) and sum(texts) == 2 * 4  # 2 classes x 4 templates, once
    assert all(k["val/zeroshot_top5"] == 1.0 for k in kept)  # 2 classes

    # the figures are those of the whole pass, epoch after epoch
    from polymodal.train.contrastive import ZeroShotTowerOutputs

    model.image_tower.spatial, model.text_tower.forward = spatial, tower
    outputs = ZeroShotTowerOutputs(images, labels)
    for epoch in range(2):
        with torch.no_grad():
            model.forget_label_embeddings()
            want, got = zeroshot_accuracy(model, images, labels), outputs.score(model)
            assert {k: got[k] for k in want} == want
            for p in heads:
                p.add_(torch.randn_like(p) * 0.5)


class _QuestionStub:
    """text_cache_input that records its batches: each real token's state is (length of the question, 1)."""

    text_cache_signature = "s44-trainspeed-question-order"

    def __init__(self):
        self.batches = []

    def text_cache_input(self, texts):
        self.batches.append(list(texts))
        width = max(len(t) for t in texts)
        mask = torch.tensor([[j < len(t) for j in range(width)] for t in texts])
        states = torch.tensor([[float(len(t)), 1.0] for t in texts])[:, None, :] * mask[..., None]
        return states, mask


def test_vqa_question_states_are_encoded_in_batches_of_similar_length():
    from polymodal.train.vqa import question_features

    questions = ["is there a very long question here?", "red?", "is it a cat?", "dog?", "is the sky blue today?", "ok?"]
    model = _QuestionStub()
    states, lengths = question_features(model, questions, batch_size=2, progress=False)
    assert [sorted(map(len, b)) == list(map(len, b)) for b in model.batches] == [True] * 3
    assert states.shape == (6, max(map(len, questions)), 2) and states.dtype == np.float16
    for q, s, n in zip(questions, states, lengths):  # each row its own question's states, padding zeroed
        assert n == len(q) and (s[:n] == [len(q), 1]).all() and not s[n:].any()


def text_parts_config(tmp_path):
    """The recipe's arch for train_caching.py with a linear image head: its text and questions parts run the towers
    alone, and `default`'s ConSE head made the script embed 1000 class prompts in its fresh cache, each run (~4 s)."""
    import json
    from pathlib import Path

    arch = json.loads((Path(__file__).resolve().parents[1] / "recipes" / "default.json").read_text())["arch"]
    config = tmp_path / "text-parts.json"
    config.write_text(json.dumps({"arch": arch | {"image_head": "linear"}}))
    return config


def test_the_benchmark_runs_and_compares(gallery, tmp_path, capsys):
    import json

    from tests.test_benchmarks_run import run_benchmark

    pairs, qa = tmp_path / "pairs.jsonl", tmp_path / "qa.jsonl"
    captions = ["a dog", "a small dog running on the grass in the park", "two children", "a man on a bike"]
    pairs.write_text("".join(json.dumps({"image": "cat.jpg", "caption": c}) + "\n" for c in captions))
    qa.write_text("".join(json.dumps({"image": "cat.jpg", "question": f"is {c} here?", "answer": "yes"}) + "\n"
                          for c in captions))
    *lines, ratios = run_benchmark("train_caching", ["--pairs", pairs, "--qa", qa, "--parts", "text,questions",
                                                     "--config", text_parts_config(tmp_path)], capsys)
    text = [line for line in lines if line.get("part") == "text" and "way" in line]
    assert [line["way"] for line in text] == ["caption_order", "length_order"] and all(l["cpu_s"] >= 0 for l in text)
    assert next(line for line in lines if "max_abs_diff" in line and line["part"] == "text")["max_abs_diff"] < 1e-4
    assert set(ratios["speedup_old_over_new_cpu"]) == {"text_caching", "question_caching"}
