"""Stop 56, helper runinfo: what a fine-tuning run kept, and what an accuracy is read against. `info --model RUN/model`
of a run that kept its starting model (no epoch beat it) looked trained; `eval vqa` of a model answering "no" to 77 of
81 questions gave 0.6543 with nothing saying that answering "no" to all scores the same; the default recipe showed
two "caching text features" bars in a row."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import polymodal
from polymodal import cli
from polymodal.eval.vqa import QARow
from polymodal.trained_with import read_trained_with, summary_rows, write_trained_with
from polymodal.train.objectives import Objective
from polymodal.train.trainer import TrainConfig, Trainer
from polymodal.training_photos import TrainingPhotos


class _Fit(Objective):
    name = "fit"

    def compute(self, model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean(), {}


class _Saved(nn.Linear):
    """A model folder's config.json and nothing else: what TrainingPhotos.save needs of a model."""

    def save(self, folder):
        (folder / "config.json").write_text(json.dumps({"version": "v1"}))


def _run(tmp_path, scores, epochs, with_validation=True):
    x = torch.randn(16, 4)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    config = TrainConfig(epochs=epochs, lr=0.05, warmup_steps=1, patience=0, weight_decay=0.0)
    it = iter(scores)
    trainer = Trainer(_Saved(4, 1), {"fit": (_Fit(), 1.0, loader)}, config, tmp_path / "run",
                      eval_fn=(lambda m: {"val/rsum": next(it)}) if with_validation else None, progress=False)
    photos = TrainingPhotos([], settings={"train": {"seed": 0}}, trainer=trainer)
    folder = tmp_path / "run" / "model"
    trainer.fit(on_best=lambda m: photos.save(m, folder), score_start=True)
    if not with_validation:
        photos.save(trainer.model, folder)  # as the recipes save a run without validation
    return read_trained_with(folder)


@pytest.mark.parametrize("scores, kept, shown", [
    ([4.209, 3.5, 4.0, 4.1], 0, "the starting model (epoch 0), unchanged: no epoch of 3 beat its val/rsum 4.209"),
    ([4.209, 3.5, 4.7, 4.1], 2, "epoch 2 of 3, the best val/rsum 4.7"),
])
def test_the_saved_model_records_the_epoch_it_is(tmp_path, scores, kept, shown):
    # the run's warning said "RUN/model is that model, unchanged"; the folder said nothing of it afterwards
    from polymodal.trained_with import kept_text

    record = _run(tmp_path, scores, 3)
    assert record["kept"] == {"epoch": kept, "epochs": 3, "metric": "val/rsum", "value": scores[kept]}
    assert record["version"] == "v1" and kept_text(record) == shown
    rows = dict(summary_rows({"folder": "f", "type": "dual_encoder", "key": "k@v1", "trained_with": record}))
    assert rows["epoch kept"] == shown


def test_without_validation_the_last_epoch_is_said_to_be_kept_by_nothing(tmp_path):
    from polymodal.trained_with import kept_text

    record = _run(tmp_path, [], 2, with_validation=False)
    assert kept_text(record) == "epoch 2 of 2, the last (no validation chose it)"


def test_info_and_repr_show_the_epoch_kept_and_older_folders_as_before(easy_vqa, tmp_path, capsys):
    folder = easy_vqa.save(tmp_path / "mine")
    base = {"polymodal": "0.1.0", "command": ["polymodal", "train", "vqa", "--epochs", "3"],
            "settings": {"train": {"seed": 0}, "model": "easy-vqa"}}
    write_trained_with(folder, {**base, "kept": {"epoch": 0, "epochs": 3, "metric": "val/rsum", "value": 4.2091}})
    kept = "the starting model (epoch 0), unchanged: no epoch of 3 beat its val/rsum 4.209"
    assert cli.main(["info", "--model", str(folder)]) == 0
    assert f"epoch kept    {kept}" in capsys.readouterr().out
    assert f"  epoch kept: {kept}\n" in repr(polymodal.load(str(folder)))
    write_trained_with(folder, base)  # a record written before the epoch was kept: loads and shows as before
    assert cli.main(["info", "--model", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "epoch kept" not in out and "command       polymodal train vqa --epochs 3" in out
    shown = repr(polymodal.load(str(folder)))
    assert "epoch kept" not in shown and "trained with: polymodal train vqa --epochs 3" in shown


def _rows(answers):
    return [QARow(f"{i}.jpg", "is there a dog?", a) for i, a in enumerate(answers)]


def test_the_majority_answer_is_what_the_accuracy_is_read_against(caplog):
    # the held-out walk: 53 "no" of 81 questions; the model said "no" to 77 of them
    from polymodal.eval.majority import majority_baseline

    gold = ["no"] * 53 + ["yes"] * 28
    predicted = ["no"] * 77 + ["yes"] * 4
    with caplog.at_level("WARNING"):
        found = majority_baseline(predicted, _rows(gold))
    assert found == {"majority_answer": "no", "majority_answer_accuracy": 0.6543, "top_prediction": "no",
                     "top_prediction_share": 0.9506}
    assert "the model answered 'no' to 77 of 81 questions (95%, warned of from 90%)" in caplog.text
    assert "answering 'no' to every question scores 0.6543" in caplog.text


@pytest.mark.parametrize("predicted", [["no"] * 71 + ["yes"] * 10, ["no"] * 10])  # 88%; or too few to say
def test_no_one_answer_warning_below_the_bar_or_on_a_handful(caplog, predicted):
    from polymodal.eval.majority import majority_baseline

    with caplog.at_level("WARNING"):
        found = majority_baseline(predicted, _rows(["Yes."] + ["no"] * (len(predicted) - 1)))
    assert "answered" not in caplog.text and found["majority_answer"] == "no"


def test_eval_vqa_json_line_keeps_its_keys_and_adds_the_baseline(gallery, tmp_path, capsys):
    names = ["cat", "coffee", "rocket", "moon"]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "question": "is there a circle?",
                                      "answer": a}) + "\n" for n, a in zip(names, ["yes", "no", "no", "no"])))
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", "easy-vqa", "--quiet"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"accuracy", "count", "per_type", "per_type_count", "unreadable", "not_finite"} <= set(line)
    assert line["majority_answer"] == "no" and line["majority_answer_accuracy"] == 0.75
    assert 0.25 <= line["top_prediction_share"] <= 1.0


class _TextTower:  # the frozen text side of a dual encoder, as the run's text caches use it
    text_frozen = True
    text_cache_signature = "s56-runinfo"

    def text_tower(self, texts):
        return torch.tensor([[len(t), 1.0] for t in texts])


def test_the_recipes_text_caches_are_labelled_apart(gallery, tmp_path, capsys):
    # `--config default` (hard_negatives "swap"): "caching text features" twice in a row, the captions and then
    # their word-swapped copies
    from polymodal.data.pairs import read_pair_source
    from polymodal.train.contrastive import ContrastiveRecipe, _hard_negatives, _texts_of
    from polymodal.train.features import TextRows

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": c}) + "\n" for n, c in
                             [("cat", "a grey cat sits on a red sofa"), ("rocket", "a white rocket on a launch pad")]))
    train_set = read_pair_source(pairs)
    recipe = ContrastiveRecipe(pairs=[str(pairs)], out=str(tmp_path / "run"), hard_negatives="swap")
    run_texts = TextRows(_texts_of(train_set, recipe))
    assert run_texts.of(_TextTower(), train_set.captions).shape == (2, 2)
    assert _hard_negatives(_TextTower(), train_set, recipe, run_texts, progress=True) is not None
    err = capsys.readouterr().err
    assert "caching caption features" in err and "caching hard-negative features" in err
    assert "caching text features" not in err


def test_image_caches_take_a_label_too(tmp_path, capsys):
    # a run with validation showed "caching image features" for its training photos, then again for the others
    import numpy as np
    from PIL import Image

    from polymodal.models.dual_encoder import DualEncoder
    from polymodal.train.features import image_features

    photo = tmp_path / "s56.png"  # a photo no other test cached: the bar shows only while it encodes
    Image.fromarray(np.random.default_rng(56).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photo)
    image_features(DualEncoder(), [photo], desc="caching validation image features")
    assert "caching validation image features" in capsys.readouterr().err
