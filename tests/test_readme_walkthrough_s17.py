"""A new user's walk through the README (session 17): mistakes found on the way give one clear line."""

import json
import logging

import pytest

import polymodal
from polymodal import cli
from polymodal.data.images import load_image
from polymodal.data.pairs import read_pair_source


@pytest.fixture
def run_folder(tmp_path):
    """What `polymodal train` leaves in --out: the model in RUN/model, the checkpoint beside it."""
    run = tmp_path / "runs" / "mine"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text(json.dumps({"type": "dual_encoder"}))
    (run / "checkpoint.pt").write_bytes(b"not read")
    (run / "train_config.json").write_text("{}")
    return run


def _one_line_error(args, capsys) -> str:
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_run_folder_given_as_the_model_names_its_model_folder(run_folder):
    # `eval retrieval --model runs/mine` used to read runs/mine/checkpoint.pt as a CLIP checkpoint
    with pytest.raises(polymodal.PolymodalError, match="training run folder; its model is .*mine/model: pass that"):
        polymodal.load(run_folder)


@pytest.mark.parametrize("command", ["contrastive", "vqa", "pretrain"])
def test_training_from_a_run_folder_names_its_model_folder(command, run_folder, gallery, tmp_path, capsys):
    # used to say "cannot train from 'runs/mine'; pass ... a folder from `polymodal train`", which it is
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"image": str(gallery / f"{name}.jpg"), "caption": f"a {name}",
                                        "question": f"is this a {name}?", "answer": "yes"}) + "\n"
                            for name in ("cat", "coffee", "rocket", "flower", "clock", "temple")))
    data = ["--qa", rows] if command == "vqa" else ["--pairs", rows, "--val-pairs", rows]
    err = _one_line_error(["train", command, *data, "--model", run_folder, "--out", tmp_path / "new", "--quiet"],
                          capsys)
    assert f"its model is {run_folder / 'model'}" in err
    assert not (tmp_path / "new").exists()


def test_a_folder_given_as_an_image_is_called_a_folder(gallery):
    # "image not found: PHOTOS" sent the user looking for a folder that is right there
    with pytest.raises(polymodal.PolymodalError, match="is a folder, not an image file"):
        load_image(gallery)


def test_an_unclosed_quote_in_a_csv_caption_is_reported_not_swallowed(gallery, tmp_path, caplog):
    lines = ["image,caption", f"{gallery / 'cat.jpg'},\"a cat"]  # the quote is never closed
    lines += [f"{gallery / name}.jpg,a photo of a {name}" for name in ("coffee", "rocket", "flower", "clock")]
    data = tmp_path / "pairs.csv"
    data.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(polymodal.PolymodalError, match="no usable image-caption pairs") as error:
            read_pair_source(data)  # used to read one pair, the cat with the rest of the file as its caption
    assert "pairs.csv:2-6: a quoted field runs over lines 2-6" in str(error.value)
    assert "so their 5 lines were read as one row and left out" in str(error.value)
    assert caplog.text == ""  # the error line says it all: no warning repeating it first


def test_a_multi_line_csv_row_names_where_it_starts(gallery, tmp_path):
    lines = ["image,caption", f"{gallery / 'cat.jpg'},a cat", f"\"{gallery / 'dog.jpg'},a dog",
             f"{gallery / 'rocket.jpg'},a rocket, \"high\" up", f"{gallery / 'coffee.jpg'},a coffee"]
    data = tmp_path / "pairs.csv"
    data.write_text("\n".join(lines) + "\n")
    got = read_pair_source(data)
    assert got.captions == ["a cat", "a coffee"]
    assert got.skipped[0][0] == f"{data}:3-4"  # was {data}:4, a line that looks fine
    assert [where for where, _ in got.skipped] == [f"{data}:3-4", f"{data}:4"]  # two rows lost: counted as two


def test_the_warmup_hint_fits_a_one_step_run(gallery, tmp_path, caplog):
    # a 1-step run was told to pass --warmup-steps 1, which warns the same again
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps({"image": str(gallery / f"{name}.jpg"), "caption": f"a {name}"}) + "\n"
                            for name in ("cat", "coffee")))
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "contrastive", "--pairs", str(rows), "--val-pairs", str(rows), "--out",
                         str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--warmup-steps", "1",
                         "--quiet"]) == 0
    assert "warmup_steps=1 is not shorter than the whole run (1 steps)" in caplog.text
    assert "pass --warmup-steps 0" in caplog.text


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"polymodal {polymodal.__version__}"


def test_an_empty_csv_says_it_is_empty(tmp_path):
    (tmp_path / "pairs.csv").write_text("")
    with pytest.raises(polymodal.PolymodalError, match="pairs.csv is empty; write a header line"):
        read_pair_source(tmp_path / "pairs.csv")


def test_an_unknown_recipe_setting_lists_the_known_ones():
    from polymodal.train.contrastive import ContrastiveRecipe

    with pytest.raises(polymodal.PolymodalError, match=r"unknown settings \['nonsense'\]; known: .*'hard_negatives'.*'lr'"):
        ContrastiveRecipe.from_dict({"nonsense": 1})


@pytest.mark.parametrize("steps_per_epoch, epochs, cap, fraction, want", [
    (7, 2, 50, 0.1, 1), (10, 10, 50, 0.1, 10), (100, 10, 50, 0.1, 50), (1, 1, 50, 0.1, 0), (3, 10, 50, 0.1, 3),
    (113, 4, 100, 0.5, 100), (30, 4, 100, 0.5, 60), (6, 1, 30, 0.5, 3), (100, 5, 30, 0.5, 30),  # captioning, VQA
])
def test_the_default_warmup_is_at_most_a_part_of_the_run(steps_per_epoch, epochs, cap, fraction, want, caplog,
                                                         tmp_path):
    """Unset, warmup is the recipe's warmup_cap steps (50; VQA and pretraining 30, captioning 100) but never more
    than warmup_fraction of the run (a tenth; those three recipes half): a small data set's run used to warm up for
    all of it (the lr never reached its peak) and warn about a setting the user never chose."""
    import torch

    from polymodal.train.trainer import Trainer, TrainConfig

    model = torch.nn.Linear(2, 1)
    loader = [torch.zeros(1, 2)] * steps_per_epoch
    config = TrainConfig(epochs=epochs, warmup_cap=cap, warmup_fraction=fraction)
    trainer = Trainer(model, {"x": (lambda m, b: m(b).sum(), 1.0, loader)}, config, tmp_path, progress=False)
    lrs = [trainer.scheduler.lr_lambdas[0](step) for step in range(steps_per_epoch * epochs)]
    assert next(i for i, f in enumerate(lrs) if f == max(lrs)) == max(want - 1, 0)  # the peak comes after `want` steps
    assert "warmup_steps" not in caplog.text


def test_the_vqa_pretraining_and_captioning_recipes_leave_warmup_unset_with_their_own_caps():
    from polymodal.train.captioning import CaptionRecipe
    from polymodal.train.pretrain import PretrainRecipe
    from polymodal.train.vqa import VQARecipe

    recipes = {"vqa": VQARecipe.from_dict({"qa": "qa.jsonl", "out": "run"}),
               "pretrain": PretrainRecipe.from_dict({"pairs": "pairs.jsonl", "out": "run"}),
               "captioning": CaptionRecipe.from_dict({"pairs": "pairs.jsonl", "out": "run"})}
    assert {k: (r.train.warmup_steps, r.train.warmup_cap, r.train.warmup_fraction) for k, r in recipes.items()} == {
        "vqa": (None, 30, 0.5), "pretrain": (None, 30, 0.5), "captioning": (None, 100, 0.5)}
    assert VQARecipe.from_dict({"qa": "qa.jsonl", "out": "run", "warmup_steps": 7}).train.warmup_steps == 7  # a chosen warmup is kept as chosen


@pytest.mark.parametrize("bad", ["5", 2.5, -1, True])
def test_a_bad_warmup_is_still_one_error(bad):
    from polymodal.train.trainer import TrainConfig

    with pytest.raises(polymodal.PolymodalError, match="warmup_steps"):
        TrainConfig(warmup_steps=bad).validate()
