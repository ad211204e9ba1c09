"""Pretraining says what its figures mean (stop 39's review): ITM validation also reports balanced accuracy (with
two negatives a caption, "never a match" scores 2/3 plain accuracy); a validation split too small for hard_k, hard
negatives asked of uniform ones, and a continued VQA model's head that pretraining does not train are warned of."""

import json
import logging

import pytest
import torch

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.train.pretrain_objectives import ITMObjective, PretrainBatch

NAMES = sorted({**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS})


class _Logits:
    def __init__(self, logits):
        self.logits = torch.tensor(logits)

    def itm_logits(self, *args):
        return self.logits


@pytest.mark.parametrize("logits, accuracy, balanced", [
    ([-1.0] * 6, 2 / 3, 0.5),  # "never a match"
    ([1.0, 1.0, -1.0, -1.0, -1.0, -1.0], 1.0, 1.0),
    ([1.0, -1.0, 1.0, -1.0, -1.0, -1.0], 4 / 6, (0.5 + 0.75) / 2),
])
def test_itm_reports_balanced_accuracy(logits, accuracy, balanced):
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # two captions: their positives, then four negatives
    batch = PretrainBatch(torch.zeros(6), None, None, None, itm_labels=labels)
    _, metrics = ITMObjective().compute(_Logits(logits), batch)
    assert metrics["itm_accuracy"] == pytest.approx(accuracy)
    assert metrics["itm_balanced_accuracy"] == pytest.approx(balanced)


@pytest.fixture(scope="module")
def pairs(gallery):
    path = gallery / "s40-pairs.jsonl"
    with path.open("w") as f:
        for name in NAMES:
            f.write(json.dumps({"image": f"{name}.jpg", "caption": f"a photo of a {name}"}) + "\n")
    return path


def _pretrain(pairs, out, *extra):
    return cli.main(["train", "pretrain", "--pairs", str(pairs), "--val-pairs", str(pairs), "--dim", "32",
                     "--batch-size", "16", "--epochs", "1", "--out", str(out), "--quiet", *extra])


def test_a_validation_split_too_small_for_hard_k_is_warned_of(pairs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert _pretrain(pairs, tmp_path / "a", "--objectives", "itm", "--hard-k", str(len(NAMES) - 1)) == 0
    assert "val/itm_*_hard measure what val/itm_*_random do" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _pretrain(pairs, tmp_path / "b", "--objectives", "itm", "--hard-k", "2") == 0
    assert "val/itm_*_hard" not in caplog.text
    metrics = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/itm_balanced_accuracy_hard" in r for r in metrics)


def test_hard_fraction_with_random_negatives_is_warned_of(pairs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert _pretrain(pairs, tmp_path / "r", "--objectives", "itm", "--negatives", "random",
                         "--hard-fraction", "1") == 0
    assert "hard_fraction 1 has no effect with negatives 'random'" in caplog.text


def test_continued_pretraining_of_a_vqa_model_warns_that_its_answers_drift(pairs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "pretrain", "--pairs", str(pairs), "--val-pairs", str(pairs), "--model", "easy-vqa",
                         "--objectives", "itm", "--epochs", "1", "--out", str(tmp_path / "v"), "--quiet"]) == 0
    assert "easy-vqa's VQA head does not train in pretraining" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "pretrain", "--pairs", str(pairs), "--val-pairs", str(pairs), "--model", "easy-vqa",
                         "--objectives", "itm", "--epochs", "1", "--out", str(tmp_path / "f"), "--quiet",
                         "--freeze", "projections,fusion"]) == 0
    assert "VQA head does not train" not in caplog.text


def test_the_hard_k_warning_does_not_call_mined_captions_random(gallery, tmp_path, caplog):
    """Two captions an image: hard_k = images - 1 takes every other image, but only half the other images' captions,
    so the hard caption negatives are still mined: the warning must not say hard measures what random does."""
    path = gallery / "s40-two-captions.jsonl"
    path.write_text("".join(json.dumps({"image": f"{n}.jpg", "caption": t.format(n)}) + "\n"
                            for n in NAMES for t in ("a photo of a {}", "the {} is shown here")))
    with caplog.at_level(logging.WARNING):
        assert _pretrain(path, tmp_path / "c", "--objectives", "itm", "--hard-k", str(len(NAMES) - 1)) == 0
    assert "mined 'hard' images are all the others" in caplog.text
    assert "val/itm_*_hard measure what val/itm_*_random do" not in caplog.text
