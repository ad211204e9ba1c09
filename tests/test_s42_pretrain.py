"""Continued pretraining of a model without an ITM head (easy-vqa) with the ITM objective: the run adds a random
ITM head. Freezing it would keep it random (refused, as `train vqa` refuses freezing the heads it makes), and the
model as it came (epoch 0, kept when no epoch beats it) is saved without it, not with a random head that
multiple choice would score candidates with."""

import json

import torch
from safetensors.torch import load_file

from polymodal import cli
from polymodal.models.fusion_encoder import continued_folder, load_fusion_encoder
from polymodal.train import pretrain

NAMES = ("astronaut", "cat", "coffee")


def _pairs(gallery, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": f"a photo of a {n}"}) + "\n"
                            for n in NAMES))
    return path


def test_freezing_the_itm_head_this_run_adds_is_refused(gallery, tmp_path, capsys):
    pairs = _pairs(gallery, tmp_path)
    out = tmp_path / "run"
    assert cli.main(["train", "pretrain", "--pairs", str(pairs), "--val-pairs", str(pairs), "--model", "easy-vqa",
                     "--objectives", "itm", "--freeze", "itm", "--out", str(out), "--epochs", "1", "--quiet"]) == 2
    assert "--freeze itm: easy-vqa has no ITM head" in capsys.readouterr().err
    assert not out.exists()


def test_the_model_kept_as_it_came_has_no_random_itm_head(gallery, tmp_path, monkeypatch):
    pairs = _pairs(gallery, tmp_path)
    real, calls = pretrain.evaluate, []

    def epoch_0_scores_best(*args, **kw):  # every trained epoch scores worse than the model as it came
        metrics = real(*args, **kw)
        metrics["val/score"] = -float(len(calls))
        calls.append(1)
        return metrics

    monkeypatch.setattr(pretrain, "evaluate", epoch_0_scores_best)
    out = tmp_path / "run"
    assert cli.main(["train", "pretrain", "--pairs", str(pairs), "--val-pairs", str(pairs), "--model", "easy-vqa",
                     "--objectives", "itm", "--out", str(out), "--epochs", "1", "--batch-size", "4", "--negatives", "random",
                     "--quiet"]) == 0
    assert len(calls) == 2  # epoch 0 and epoch 1; epoch 0 kept
    assert json.loads((out / "model" / "config.json").read_text())["itm_head"] is False
    saved = load_file(out / "model" / "model.safetensors")
    before = load_fusion_encoder(continued_folder("easy-vqa", "pretrain")).trained_state()
    assert set(saved) == set(before) and all(torch.equal(saved[k], before[k]) for k in saved)
