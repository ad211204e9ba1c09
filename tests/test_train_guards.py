"""Training refuses mistakes up front (one line, exit 2, no folder left behind), never mixes two runs in one folder,
never reports a run without optimizer steps as trained, and gives every rank of a torchrun run a batch."""

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.errors import PolymodalError
from polymodal.data.pairs import read_pair_sources
from polymodal.train.contrastive import rank_batch_size
from polymodal.train.metrics import read_metrics
from polymodal.train.objectives import Objective
from polymodal.train.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def pairs_file(gallery):
    path = gallery / "guard_pairs.jsonl"
    path.write_text("".join(json.dumps({"image": f"{name}.jpg", "caption": desc}) + "\n"
                            for name, (_, desc) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items()))
    return path


def _contrastive(pairs_file, out, *extra, epochs=1) -> list[str]:
    return ["train", "contrastive", "--pairs", str(pairs_file), "--val-pairs", str(pairs_file), "--out", str(out),
            "--quiet", "--embed-dim", "16", *(["--epochs", str(epochs)] if epochs else []), *map(str, extra)]


def _one_line_error(capsys, argv, *needles) -> str:
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# -- 1. every rank gets a batch; no step, no "trained" run ------------------------------------------------------


def test_batch_is_capped_per_rank():
    assert rank_batch_size(60, 256, world=2) == 30  # was 60: each rank's 30 images made no full batch
    assert rank_batch_size(60, 64, world=2) == 30
    assert rank_batch_size(60, 16, world=2) == 16
    assert rank_batch_size(15, 256) == 15
    with pytest.raises(PolymodalError, match="at least 2 training images"):
        rank_batch_size(1, 8)
    with pytest.raises(PolymodalError, match="4 processes"):
        rank_batch_size(3, 8, world=4)
    with pytest.raises(PolymodalError, match="a batch of 2"):  # one image per rank has nothing to contrast with
        rank_batch_size(5, 8, world=4)


def test_rank_of_a_two_process_run_takes_a_step(capsys, pairs_file, tmp_path, monkeypatch):
    # Rank 0 of two, without a process group: the sampler hands it 7 of the 15 images.
    from polymodal.train import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert cli.main(_contrastive(pairs_file, tmp_path / "run")) == 0  # default --batch-size 256
    best = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["best"]
    assert best["step"] == 1 and math.isfinite(best["train_loss"])


class Pull(Objective):
    def compute(self, model, batch):
        return ((model(batch[0]) - 1) ** 2).mean(), {}


def _trainer(out, epochs=1, rows=8, batch=4, drop_last=False, eval_fn=None, **cfg):
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(rows, 3)), batch_size=batch, drop_last=drop_last)
    config = TrainConfig(epochs=epochs, warmup_steps=1, patience=0, **cfg)
    return Trainer(torch.nn.Linear(3, 1), {"pull": (Pull(), 1.0, loader)}, config, out, eval_fn, progress=False)


def test_no_batch_means_no_run(tmp_path):
    with pytest.raises(PolymodalError, match="no batch"):
        _trainer(tmp_path / "run", rows=3, batch=4, drop_last=True)
    assert not (tmp_path / "run").exists()


def test_resuming_a_finished_run_is_refused(tmp_path):
    _trainer(tmp_path, epochs=1).fit()
    with pytest.raises(PolymodalError, match="already trained 1 epochs; pass --epochs 2"):
        _trainer(tmp_path, epochs=1).fit(resume=True)


# -- 2. one run per folder -----------------------------------------------------------------------------------------


def test_existing_run_is_refused_and_overwrite_replaces_it(capsys, pairs_file, tmp_path):
    out = tmp_path / "mine"
    assert cli.main(_contrastive(pairs_file, out)) == 0
    before = (out / "metrics.jsonl").read_text()
    _one_line_error(capsys, _contrastive(pairs_file, out), "already holds a training run", "--resume", "--overwrite")
    assert (out / "metrics.jsonl").read_text() == before
    (out / "notes.txt").write_text("mine")
    assert cli.main(_contrastive(pairs_file, out, "--overwrite", epochs=2)) == 0
    assert [r["epoch"] for r in read_metrics(out) if r["split"] == "val"] == [1, 2]  # the new run only
    assert not (out / ".replaced-run").exists()  # the old run went once the new one saved an epoch
    assert len(list((out / "tensorboard").iterdir())) == 1
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files go
    # RUN/model as --out (mixed up with --model) would mix a run into the model folder
    _one_line_error(capsys, _contrastive(pairs_file, out / "model"), "holds a saved model, not a run")
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json", "model.safetensors", "trained_with.json",
                                                                 "training_photos.txt"]


def test_overwrite_stopped_before_its_first_epoch_puts_the_old_run_back(capsys, monkeypatch, pairs_file, tmp_path):
    out = tmp_path / "mine"
    assert cli.main(_contrastive(pairs_file, out)) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def stopped(self, logger):
        logger.write({"step": 1, "split": "train", "loss": 1.0})  # it had begun writing the new run
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_epoch", stopped)
    assert cli.main(_contrastive(pairs_file, out, "--overwrite", epochs=2)) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"polymodal: interrupted: no epoch had finished; {out} holds the run --overwrite was to replace, " \
                  "as before"
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("argv", [["train", "pretrain", "--pairs", "p.jsonl"], ["train", "vqa", "--qa", "q.jsonl"]])
def test_every_trainer_refuses_an_existing_run(capsys, tmp_path, argv):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    _one_line_error(capsys, argv + ["--out", tmp_path / "run"], "already holds a training run")


# -- 3. settings checked before any folder is made -------------------------------------------------------------------


@pytest.mark.parametrize("extra, config, needle", [
    (["--resume"], None, "no checkpoint"),
    ([], {"epochs": "two"}, "epochs must be an integer"),
    ([], {"train": {"foo": 1}}, "unknown settings under train: ['foo']"),
    (["--lr", "-1"], None, "lr must be above 0"),
    (["--lr", "1e38"], None, "lr must be above 0 and at most 10, got 1e+38"),  # was Adam's overflow traceback
    (["--epochs", "0"], None, "epochs must be at least 1"),
    (["--batch-size", "0"], None, "batch_size must be at least 2"),
    (["--val-fraction", "1"], None, "val_fraction must be in [0, 1)"),
    (["--resume", "--overwrite"], None, "not both"),
    ([], {"overwrite": True}, "pass --overwrite on the command line"),  # a config that always deletes is a trap
    ([], {"batch_size": 8, "batch-size": 16}, "sets batch_size twice, 8 as batch_size and 16 as batch-size"),
    ([], {"epochs": 1, "train": {"epochs": 2}}, "sets epochs twice, 1 as epochs and 2 as train.epochs"),
])
def test_bad_settings_are_one_line_and_leave_no_folder(capsys, pairs_file, tmp_path, extra, config, needle):
    if config is not None:
        (tmp_path / "c.json").write_text(json.dumps(config))
        extra = extra + ["--config", tmp_path / "c.json"]
    _one_line_error(capsys, _contrastive(pairs_file, tmp_path / "run", *extra, epochs=None), needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["train", "pretrain", "--pairs", "p.jsonl"], ["train", "vqa", "--qa", "q.jsonl"]])
def test_pretrain_and_vqa_check_settings_first(capsys, tmp_path, argv):
    _one_line_error(capsys, argv + ["--out", tmp_path / "run", "--lr", "-1"], "lr must be above 0")
    _one_line_error(capsys, argv + ["--out", tmp_path / "run", "--resume"], "no checkpoint")
    assert not (tmp_path / "run").exists()


# -- 4. the result says which epoch was best -------------------------------------------------------------------------


def test_a_finished_run_resumed_with_more_epochs_trains_its_next_step_at_the_new_schedule(tmp_path):
    from polymodal.train.trainer import warmup_cosine

    _trainer(tmp_path, epochs=2, lr=1e-3, log_every=1).fit()  # 4 steps; the last rate of its schedule is ~0
    resumed = _trainer(tmp_path, epochs=4, lr=1e-3, log_every=1)
    resumed.fit(resume=True)
    rows = [r for r in read_metrics(tmp_path) if r.get("split") == "train"]
    first = next(r for r in rows if r["step"] == 5)  # the first step after the resume runs as step index 4
    assert first["lr"] == pytest.approx(1e-3 * warmup_cosine(1, 8)(4)) and first["lr"] > 1e-4
    assert [r["step"] for r in rows] == list(range(1, 9))


def test_resume_without_improvement_keeps_the_previous_best(tmp_path):
    first = _trainer(tmp_path, epochs=1, eval_fn=lambda m: {"val/rsum": 1.0}).fit()
    again = _trainer(tmp_path, epochs=2, eval_fn=lambda m: {"val/rsum": 0.5}).fit(resume=True)
    assert again == first and again["epoch"] == 1


def test_result_line_on_rank_0_only_and_says_when_nothing_improved(capsys, tmp_path, monkeypatch):
    from polymodal.cli_train import run_recipe
    from polymodal.train import distributed

    args = SimpleNamespace(resume=False, quiet=True, overwrite=False)
    recipe = SimpleNamespace(from_dict=lambda settings: settings)
    settings = {"pairs": ["p.jsonl"], "out": str(tmp_path / "run")}
    assert run_recipe(args, settings, "pairs", recipe, lambda r, **kw: {}) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["best"] is None and "no epoch improved" in line["note"] and line["model"] is None
    assert "--overwrite" in line["note"]  # "try a lower --lr" alone met "already holds a training run"
    (tmp_path / "run" / "model").mkdir(parents=True)  # a resumed run whose new epochs did not beat the old model
    assert run_recipe(SimpleNamespace(resume=True, quiet=True, overwrite=False), settings, "pairs", recipe,
                      lambda r, **kw: {}) == 0
    line = json.loads(capsys.readouterr().out)
    assert "model from before the resume is kept" in line["note"] and line["model"] == str(tmp_path / "run" / "model")
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert run_recipe(args, settings, "pairs", recipe, lambda r, **kw: {"epoch": 1}) == 0
    assert capsys.readouterr().out == ""


# -- 5. plot -----------------------------------------------------------------------------------------------------------


def test_plot_refuses_a_format_it_cannot_write(capsys, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "split": "val", "train_loss": 1.0}\n')
    _one_line_error(capsys, ["plot", tmp_path, "--out", tmp_path / "curves.txt"], "curves.txt", ".png", ".pdf", ".svg")
    assert not (tmp_path / "curves.txt").exists()


def test_plot_of_a_runs_model_folder_names_the_run(capsys, tmp_path):
    """`--model RUN/model` is how every other command takes a run; plot said only 'no metrics.jsonl'."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "split": "val", "train_loss": 1.0}\n')
    (tmp_path / "model").mkdir()
    _one_line_error(capsys, ["plot", tmp_path / "model"], "model folder", f"polymodal plot {tmp_path.resolve()}")
    _one_line_error(capsys, ["plot", tmp_path / "model" / "none"], "no metrics.jsonl")


def test_short_epochs_still_log_a_step(tmp_path):
    _trainer(tmp_path, epochs=2, rows=8, batch=4, log_every=10).fit()  # 2 steps an epoch, fewer than log_every
    assert [(r["step"], "lr" in r) for r in read_metrics(tmp_path) if r["split"] == "train"] == [(2, True), (4, True)]


# -- 6. / 7. data warnings and config keys ---------------------------------------------------------------------------


def test_malformed_rows_are_warned_about_once(pairs_file, caplog):
    bad = pairs_file.parent / "guard_bad_rows.jsonl"
    bad.write_text(pairs_file.read_text().replace("\n", "\n{not json\n", 1))
    with caplog.at_level(logging.WARNING):
        read_pair_sources([str(bad)])
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1, caplog.text


def test_config_takes_every_flag_key(tmp_path):
    from polymodal.cli_train import TRAIN_FLAGS, recipe_settings
    from polymodal.train.contrastive import ContrastiveRecipe

    (tmp_path / "c.json").write_text(json.dumps({"quiet": True, "embed-dim": 32, "batch_size": 8, "epochs": 3,
                                                 "val_pairs": "v.jsonl", "train": {"lr": 0.01}}))
    args = cli.build_parser().parse_args(["train", "contrastive", "--pairs", "p.jsonl", "--out", "o",
                                          "--config", str(tmp_path / "c.json"), "--epochs", "5"])
    settings = recipe_settings(args, ("pairs", "val_pairs", "out", "model"), TRAIN_FLAGS)
    recipe = ContrastiveRecipe.from_dict(settings)
    assert args.quiet and recipe.arch.embed_dim == 32 and recipe.batch_size == 8
    assert recipe.train.epochs == 5 and recipe.train.lr == 0.01  # the flag overrides the config
    assert recipe.val_pairs == ["v.jsonl"]


def test_settings_from_python_take_numpy_numbers_and_a_bare_path(tmp_path):
    import numpy as np

    from polymodal.train.vqa import VQARecipe

    config = TrainConfig(epochs=np.int64(3), lr=np.float32(0.01))
    config.validate()  # a sweep over np.arange values is valid input
    recipe = VQARecipe(qa=tmp_path / "train.jsonl", out=str(tmp_path / "run"))
    assert recipe.qa == [tmp_path / "train.jsonl"] and recipe.val_qa == []


@pytest.mark.parametrize("checkpoint", [True, False])
def test_ctrl_c_during_training_says_what_was_kept(tmp_path, monkeypatch, capsys, checkpoint):
    from polymodal import cli
    from polymodal.train import contrastive

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(contrastive, "train_contrastive", interrupted)
    out = tmp_path / "run"
    if checkpoint:
        out.mkdir()
        (out / "checkpoint.pt").write_bytes(b"")
    assert cli.main(["train", "contrastive", "--pairs", str(tmp_path / "p.jsonl"), "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    kept = f"{out} keeps the last finished epoch; run the same command with --resume to continue"
    assert err == "polymodal: interrupted: " + (kept if checkpoint else "no epoch had finished, so nothing was kept")


@pytest.mark.parametrize("command", [["train", "vqa", "--qa", "q.jsonl"], ["train", "captioner"],
                                     ["train", "pretrain"]])
def test_resuming_another_commands_run_names_the_mix_up(capsys, pairs_file, tmp_path, command):
    out = tmp_path / "mine"
    assert cli.main(_contrastive(pairs_file, out)) == 0
    _one_line_error(capsys, command + ["--out", out, "--resume", "--epochs", "3"],
                    f"{out} holds a run that another `polymodal train` command started",
                    "with that command and --resume")


def test_resuming_with_other_data_says_so(pairs_file, tmp_path, caplog):
    import shutil

    out = tmp_path / "mine"
    assert cli.main(_contrastive(pairs_file, out)) == 0
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "contrastive", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert "--resume with other" not in caplog.text  # the run's own data, from its train_config.json
    other = pairs_file.parent / "more_pairs.jsonl"  # beside it: its image paths are relative to the file
    shutil.copy(pairs_file, other)
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "contrastive", "--out", str(out), "--resume", "--epochs", "3", "--quiet",
                         "--pairs", str(other)]) == 0
    assert f"--resume with other pairs than the run started with ({other}); its epochs so far trained on " \
           f"{pairs_file.resolve()}" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_a_damaged_checkpoint_on_resume_is_one_line(capsys, pairs_file, tmp_path, damage):
    out = tmp_path / "mine"
    assert cli.main(_contrastive(pairs_file, out)) == 0
    good = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2] if damage == "truncated" else b"garbage\n")
    _one_line_error(capsys, ["train", "contrastive", "--out", out, "--resume", "--epochs", "2", "--quiet"],
                    f"cannot read {out / 'checkpoint.pt'}", "damaged", "--overwrite")


def test_fine_tuning_scores_the_model_it_starts_from_as_epoch_0(pairs_file, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(_contrastive(pairs_file, first, epochs=2)) == 0
    kept = max((r for r in read_metrics(first) if r["split"] == "val"), key=lambda r: (r["val/rsum"], r["epoch"]))
    assert cli.main(_contrastive(pairs_file, second, "--model", first / "model")) == 0
    start = [r for r in read_metrics(second) if r["split"] == "val"][0]
    assert start["epoch"] == 0 and start["step"] == 0 and "train_loss" not in start
    assert start["val/rsum"] == pytest.approx(kept["val/rsum"])  # the same model on the same photos
    assert (second / "model" / "model.safetensors").is_file()
    from polymodal.train.plot import plot_run

    assert plot_run(second).is_file()  # epoch 0 has no training loss to draw


def test_validation_photos_that_training_sees_or_too_few_of_them_are_warned_about(pairs_file, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert cli.main(_contrastive(pairs_file, tmp_path / "same")) == 0  # --pairs and --val-pairs: one file
    photos = len(read_pair_sources([str(pairs_file)]).images)
    assert f"{photos} of the {photos} validation photos (--val-pairs) are training photos too" in caplog.text
    assert f"only {photos} validation photos" in caplog.text
    caplog.clear()
    val = pairs_file.parent / "guard_val_one.jsonl"
    lines = pairs_file.read_text().splitlines(keepends=True)
    val.write_text(lines[0])
    train = pairs_file.parent / "guard_train_rest.jsonl"
    train.write_text("".join(lines[1:]))
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "contrastive", "--pairs", str(train), "--val-pairs", str(val), "--out",
                         str(tmp_path / "apart"), "--quiet", "--embed-dim", "16", "--epochs", "1"]) == 0
    assert "training photos too" not in caplog.text and "only 1 validation photos" in caplog.text


def test_architecture_settings_that_a_continued_model_would_ignore_are_refused(capsys, pairs_file, tmp_path):
    first = tmp_path / "first"
    assert cli.main(_contrastive(pairs_file, first)) == 0  # --embed-dim 16
    argv = ["train", "contrastive", "--pairs", pairs_file, "--out", tmp_path / "second", "--quiet", "--epochs", "1",
            "--model", first / "model"]
    _one_line_error(capsys, argv + ["--embed-dim", "32", "--image-head", "mlp"],
                    f"--model {first / 'model'} keeps its own architecture (embed_dim 16, image_head 'linear'), so "
                    "embed_dim 32, image_head 'mlp' (flags or --config) would be ignored")
    assert not (tmp_path / "second").exists()
    assert cli.main([str(a) for a in argv + ["--embed-dim", "16"]]) == 0  # the model's own value is no conflict
