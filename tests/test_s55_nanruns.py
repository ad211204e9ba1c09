"""Stop 55, models that go NaN as users meet them. A training step whose loss was finite can still leave the weights
NaN (the loss is checked before each step, not after it): without validation nothing looked at them again, and
`train vqa` saved RUN/model answering every question as NaN, without a word (`eval vqa` refused it later); a run
whose later epoch did so kept that epoch as its checkpoint and RUN/model. `train contrastive` saved a NaN dual
encoder even with validation, which scored it rsum 0.0 and kept it. Now the trainer stops at the epoch whose
weights are not finite, before it is saved or validated: the run keeps its last good epoch (or, at its first, leaves
nothing that holds a later run off). From Python, predict() and predict_choices() of a model that scores every row
as NaN raised nothing and gave each row the vocabulary's first answer: now one error naming the model.
Fast: a tiny fusion encoder (dim 16) on 4 one-colour photos; 6 gallery photos for the contrastive run."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from PIL import Image

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa, vqa_accuracy
from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
from polymodal.train.trainer import read_checkpoint

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "white": (255, 255, 255)}


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    """4 photos, 2 questions on each (one training step an epoch at the default batch size)."""
    folder = tmp_path_factory.mktemp("nanruns")
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (32, 32), rgb).save(folder / f"{name}.png")
        rows += [{"image": str(folder / f"{name}.png"), "question": "is it bright?", "answer": "yes"},
                 {"image": str(folder / f"{name}.png"), "question": "is it dark?", "answer": "no"}]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "qa.jsonl"


@pytest.fixture()
def diverge_after(monkeypatch):
    """diverge_after(n): every AdamW step after the first n leaves each weight it updates NaN, as a diverged update
    does (the loss of that step was finite)."""
    step = torch.optim.AdamW.step

    def start(n: int = 0) -> None:
        count = itertools.count(1)

        def diverging(self, *args, **kwargs):
            loss = step(self, *args, **kwargs)
            if next(count) > n:
                with torch.no_grad():
                    for param in (p for group in self.param_groups for p in group["params"]):
                        param.fill_(float("nan"))
            return loss

        monkeypatch.setattr(torch.optim.AdamW, "step", diverging)

    return start


def _train_vqa(capsys, qa, out, epochs: int, *extra):
    code = cli.main(["train", "vqa", "--qa", str(qa), "--out", str(out), "--epochs", str(epochs), "--dim", "16",
                     "--fusion", "concat", "--val-fraction", "0", "--quiet", *map(str, extra)])
    return code, capsys.readouterr().err


def test_train_vqa_without_validation_stops_at_weights_gone_nan(capsys, qa, tmp_path, diverge_after, monkeypatch):
    diverge_after(0)
    code, err = _train_vqa(capsys, qa, tmp_path / "run", 1)
    assert code == 2 and "the weights became NaN or inf in epoch 1" in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()
    # what the refused run left (an empty folder) holds off no rerun: the same command, with sane steps, trains
    monkeypatch.undo()
    assert _train_vqa(capsys, qa, tmp_path / "run", 1)[0] == 0


def test_a_later_epoch_gone_nan_leaves_the_last_good_one(capsys, qa, tmp_path, diverge_after):
    import polymodal

    diverge_after(1)  # epoch 1 (one step) trains, epoch 2's step leaves the weights NaN
    code, err = _train_vqa(capsys, qa, tmp_path / "run", 3)
    assert code == 2 and "the weights became NaN or inf in epoch 2" in err, err
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    red = str(qa.parent / "red.png")
    (_, score), = polymodal.load(str(tmp_path / "run" / "model")).predict([red], ["is it bright?"])
    assert score == score  # epoch 1's model, not NaN


def test_train_contrastive_stops_at_weights_gone_nan_even_with_validation(capsys, gallery, tmp_path, diverge_after):
    """Validation ranked a NaN dual encoder's recalls as 0.0, better than the -inf before any epoch: it was kept."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{name}.jpg"), "caption": desc}) + "\n"
                             for name, (_, desc) in list(SKIMAGE_PHOTOS.items())[:6]))
    diverge_after(0)
    code = cli.main(["train", "contrastive", "--pairs", str(pairs), "--val-pairs", str(pairs), "--out",
                     str(tmp_path / "run"), "--epochs", "1", "--embed-dim", "16", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "the weights became NaN or inf in epoch 1" in err, err
    assert not (tmp_path / "run" / "model").exists()


# -- from Python: a model that scores every row as NaN is an error, not the vocabulary's first answer ---------------

@pytest.fixture(scope="module")
def nan_fusion():
    torch.manual_seed(55)
    model = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, dropout=0.0, answers=["yes", "no", "red"]))
    with torch.no_grad():
        model.vqa_head[-1].bias.fill_(float("nan"))
    return model


def test_predict_raises_for_a_model_answering_nan(qa, nan_fusion):
    red, blue = str(qa.parent / "red.png"), str(qa.parent / "blue.png")
    with pytest.raises(PolymodalError, match="model 'fusion-encoder' scores the answers to all 2 questions as NaN"):
        nan_fusion.predict([red, blue], ["is it red?", "is it blue?"])
    with pytest.raises(PolymodalError, match="its one question as NaN or inf, so none can be chosen"):
        nan_fusion.predict_choices([red], ["which colour?"], [["red", "no"]])
    # `eval vqa` without the feature cache (predict() a chunk at a time): the same error as with it, not "could not
    # be read" (a chunk that raises is retried row by row, each failure counted as an unreadable photo)
    with pytest.raises(PolymodalError, match="all 8 questions as NaN or inf"):
        vqa_accuracy(nan_fusion, read_qa(qa), cache=False)


def test_one_row_answered_nan_among_finite_ones_keeps_its_nan_score(qa, nan_fusion, monkeypatch):
    """An input that overflows the model (an fp16 grid) makes one row NaN: eval vqa leaves that row out and counts
    it, so predict() raises only when every row is NaN."""
    with pytest.raises(PolymodalError, match="its one question as NaN"):  # (the model that does fails on one row)
        nan_fusion.predict([str(qa.parent / "red.png")], ["is it red?"])
    torch.manual_seed(55)
    model = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, dropout=0.0, answers=["yes", "no", "red"]))
    real = FusionEncoder.image_cache_input

    def overflowing(self, pixels):
        out = real(self, pixels)
        white = pixels.float().flatten(1).amin(1) > 0.9
        return torch.where(white[:, None, None], torch.full_like(out, float("inf")), out)

    monkeypatch.setattr(FusionEncoder, "image_cache_input", overflowing)
    got = model.predict([str(qa.parent / "red.png"), str(qa.parent / "white.png")], ["is it red?"] * 2)
    assert got[0][1] == got[0][1] and got[1][1] != got[1][1]


def test_yes_no_model_raises_too(qa, coco_yesno):
    broken = copy.deepcopy(coco_yesno)
    broken.state["coef"] = broken.state["coef"] * float("nan")
    with pytest.raises(PolymodalError, match=f"model '{coco_yesno.name}' scores the answers to its one question"):
        broken.predict([str(qa.parent / "red.png")], ["is it red?"])
    with pytest.raises(PolymodalError, match="NaN or inf"):
        broken.predict_choices([str(qa.parent / "red.png")], ["is it red?"], [["yes", "no"]])
