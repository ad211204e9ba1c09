"""The start and the end that `train pretrain` and `train vqa` share: both train a fusion encoder in a run folder, so
they refuse a bad start in the same order and save the model the same way (one place to change both)."""

from __future__ import annotations

from polymodal.models.fusion_encoder import continued_folder
from polymodal.train.guards import check_run_folder, prepare_run_folder, save_without_untrained_itm
from polymodal.train.run_settings import write_train_config


def check_fusion_start(recipe, task: str, resume: bool, overwrite: bool) -> None:
    """The refusals made before any data is read (``task``: "pretrain" or "vqa"): torchrun, the recipe's settings,
    the run folder, then the folder --model names."""
    from polymodal.train.distributed import refuse_torchrun

    refuse_torchrun(f"train {task}")
    recipe.validate()
    check_run_folder(recipe.out, resume, overwrite, recipe.train.epochs, recipe.train.patience)
    if recipe.model != "new":
        continued_folder(recipe.model, task)  # what --model names is said before the data is read


def fit_and_save(trainer, photos, settings: dict, resume: bool, overwrite: bool, score_start: bool) -> dict:
    """Trains, saving each best epoch's model to RUN/model with ``photos`` (without validation: the last epoch's);
    returns the best epoch's record. ``photos`` must be made first: it reads --model's folder, which --overwrite
    may move aside."""
    out = trainer.out
    prepare_run_folder(out, overwrite)

    def save_best(model) -> None:
        save_without_untrained_itm(lambda m: photos.save(m, out / "model"), model, trainer.epoch)

    best = trainer.fit(resume=resume, on_best=save_best,
                       on_start=lambda: write_train_config(out, settings),  # after the checkpoint loaded
                       score_start=score_start)
    photos.finish(trainer.model, out / "model")
    return best
