"""Training review (stop 44): what a run reports matches the model it keeps; a model continued with the recipe it
was trained with is not refused for the recipe's model name."""

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from polymodal.errors import PolymodalError
from polymodal.train.objectives import Objective
from polymodal.train.trainer import TrainConfig, Trainer


class _LossPerEpoch(Objective):
    """A loss that is the given value in each epoch (the weights still take a step, so the run trains)."""

    def __init__(self, values):
        self.values, self.epoch = values, 0

    def compute(self, model, batch):
        loss = (model(batch[0]) * 0).sum() + self.values[self.epoch]
        return loss, {}


def test_without_validation_the_reported_epoch_is_the_one_kept(tmp_path):
    """Without validation (--val-fraction 0, no --val-pairs) every trainer saves the last epoch as RUN/model after
    fit; fit reported the epoch with the lowest training loss as "best" (a rise at the end: epoch 2 of 3), and
    on_best last saved that one, beside a RUN/model of epoch 3."""
    objective = _LossPerEpoch([1.0, 0.5, 0.8])
    loader = DataLoader(TensorDataset(torch.randn(4, 3)), batch_size=2)
    trainer = Trainer(torch.nn.Linear(3, 1), {"loss": (objective, 1.0, loader)},
                      TrainConfig(epochs=3, patience=0, warmup_steps=0), tmp_path, None, progress=False)
    original = trainer._train_epoch

    def epoch(logger):
        objective.epoch = trainer.epoch
        return original(logger)

    trainer._train_epoch = epoch
    saved = []
    best = trainer.fit(on_best=lambda m: saved.append(trainer.epoch))
    assert best["epoch"] == 3 and best["train_loss"] == pytest.approx(0.8)
    assert saved[-1] == 3


def test_a_model_continued_with_its_own_recipe_is_not_refused_for_the_recipe_name(tmp_path):
    """`--config default --model RUN/model` (a model trained with that recipe, named after its run folder) was
    refused: "keeps its own architecture (name 'mine'), so name 'default' ... would be ignored; drop them", a key
    of a shipped recipe the user cannot drop. A name is no architecture; a differing size still is refused."""
    from polymodal.cli_train import _read_config, check_arch_of_continued_model

    recipe = _read_config("default")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**recipe["arch"], "name": "mine"}))
    check_arch_of_continued_model({"model": str(folder), "arch": dict(recipe["arch"])})
    with pytest.raises(PolymodalError, match="embed_dim"):
        check_arch_of_continued_model({"model": str(folder), "arch": {**recipe["arch"], "embed_dim": 16}})


def test_a_run_retrained_in_place_from_its_own_model_keeps_that_models_training_photos(gallery, tmp_path):
    """`--out RUN --overwrite --model RUN/model`: --overwrite moved RUN/model aside before the new run read the
    training photos the starting model records, so the new model's list lost them and `eval` on those photos said
    seen_in_training 0 (held-out figures) for photos the model learned from."""
    from polymodal import cli
    from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
    from polymodal.training_photos import photo_hash, read_training_photos

    rows = [{"image": str(gallery / f"{name}.jpg"), "caption": desc}
            for name, (_, desc) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items()]
    first, second, val = tmp_path / "first.jsonl", tmp_path / "second.jsonl", tmp_path / "val.jsonl"
    for path, part in ((first, rows[:5]), (second, rows[5:10]), (val, rows[10:])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    out = tmp_path / "run"

    def train(pairs, *extra):
        assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--val-pairs", str(val), "--out", str(out),
                         "--quiet", "--embed-dim", "16", "--epochs", "1", "--batch-size", "4", *extra]) == 0

    train(first)
    train(second, "--overwrite", "--model", str(out / "model"))
    learned = read_training_photos(out / "model")
    assert {photo_hash(r["image"]) for r in rows[:10]} <= learned
