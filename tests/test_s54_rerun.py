"""Rerunning and varying a run (stop 54, helper rerun): a run's own RUN/train_config.json passed back as --config
(JSON or TOML) with one value changed; zero-shot labels and classes as CSV; `plot --json`. Tiny runs over photos
this module writes (not the shared gallery)."""

import json
import logging

import pytest

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS, write_sample_gallery
from polymodal.errors import PolymodalError
from conftest import cli_json

NAMES = sorted(SKIMAGE_PHOTOS)[:6]
QUIET = ["--quiet", "--epochs", "1", "--batch-size", "4", "--warmup-steps", "1", "--patience", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rerun-data")
    write_sample_gallery(folder)
    with (folder / "pairs.jsonl").open("w") as f:
        for n in NAMES:
            for t in ("a photo of a {}", "there is a {} here"):
                f.write(json.dumps({"image": f"{n}.jpg", "caption": t.format(n)}) + "\n")
    with (folder / "qa.jsonl").open("w") as f:
        for i, n in enumerate(NAMES):
            for q, a in (("what is this?", n), (f"is this a {n}?", "yes"), (f"is this a {NAMES[i - 1]}?", "no")):
                f.write(json.dumps({"image": f"{n}.jpg", "question": q, "answer": a}) + "\n")
    return folder


def _train(*argv) -> None:
    assert cli.main(["train", *map(str, argv)]) == 0


def _settings(run) -> dict:
    saved = json.loads((run / "train_config.json").read_text())
    saved.pop("out")
    return saved


COMMANDS = {"contrastive": ["--pairs", "pairs.jsonl", "--embed-dim", "8"], "vqa": ["--qa", "qa.jsonl", "--dim", "16"],
            "pretrain": ["--pairs", "pairs.jsonl", "--dim", "16", "--negatives", "random", "--val-fraction", "0.34"],
            "captioner": ["--pairs", "pairs.jsonl", "--val-fraction", "0.34"]}


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    """`first_run(command)`: (run folder, printed result) of COMMANDS[command] trained for one epoch, once per module:
    the tests that start from that very run (contrastive's and VQA's twice) read it and change nothing in it."""
    runs = {}

    def run(command):
        if command not in runs:
            out = tmp_path_factory.mktemp(f"rerun-{command}") / "a"
            flags = [data / f if f.endswith(".jsonl") else f for f in COMMANDS[command]]
            runs[command] = out, cli_json(["train", command, *flags, "--out", out, *QUIET])
        return runs[command]

    return run


@pytest.mark.parametrize("command", COMMANDS)
def test_a_runs_train_config_is_taken_back_as_config(command, first_run, tmp_path, capsys):
    """`--config RUN/train_config.json` was refused for every `train` command: the keys the trainers add beside the
    recipe (train_images, validation, world_size, ...) read as unknown settings, and VQA's recorded answer count
    as a vocabulary. Now the same settings come back, and a changed --epochs is the only difference."""
    run, printed = first_run(command)
    _train(command, "--config", run / "train_config.json", "--out", tmp_path / "b", "--quiet")
    assert _settings(tmp_path / "b") == _settings(run)
    (b,) = (json.loads(line)["best"] for line in capsys.readouterr().out.strip().splitlines())
    assert printed["best"]["train_loss"] == b["train_loss"]  # the same run again
    _train(command, "--config", run / "train_config.json", "--out", tmp_path / "c", "--epochs", "2", "--quiet")
    varied, was = _settings(tmp_path / "c"), _settings(run)
    assert varied["train"].pop("epochs") == 2 and was["train"].pop("epochs") == 1 and varied == was


def test_a_runs_config_as_toml_and_with_another_seed(data, tmp_path):
    """The same file written as TOML (which has no null: unset settings left out), and --seed varied over it."""
    _train("contrastive", "--pairs", data / "pairs.jsonl", "--embed-dim", "8", "--out", tmp_path / "a", "--quiet",
           "--epochs", "1", "--batch-size", "4")
    saved = json.loads((tmp_path / "a" / "train_config.json").read_text())
    assert saved["train"]["warmup_steps"] is None  # unset: worked out from the run's length
    (tmp_path / "a.toml").write_text(_toml(saved))
    _train("contrastive", "--config", tmp_path / "a.toml", "--out", tmp_path / "b", "--quiet")
    assert _settings(tmp_path / "b") == _settings(tmp_path / "a")
    _train("contrastive", "--config", tmp_path / "a" / "train_config.json", "--out", tmp_path / "c", "--seed", "1",
           "--quiet")
    varied, was = _settings(tmp_path / "c"), _settings(tmp_path / "a")
    assert varied["train"].pop("seed") == 1 and was["train"].pop("seed") == 0
    varied.pop("validation"), was.pop("validation")  # another seed, another validation split
    assert varied == was


def _toml(d: dict) -> str:
    """A train_config.json as TOML, as a converter writes it (null left out; tables after the top-level keys)."""
    def value(v):
        return json.dumps(v) if not isinstance(v, dict) else "{" + ", ".join(f"{k} = {value(x)}" for k, x in
                                                                             v.items() if x is not None) + "}"
    top = [f"{k} = {value(v)}" for k, v in d.items() if v is not None and k not in ("arch", "train")]
    tables = [f"[{t}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in d[t].items() if v is not None)
              for t in ("arch", "train")]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def test_without_another_out_the_saved_run_is_refused_not_replaced(first_run, capsys):
    """The file names the run it came from as "out": reused as is, that run is refused (and kept), naming --out."""
    run, _ = first_run("contrastive")
    before = (run / "model" / "model.safetensors").read_bytes()
    assert cli.main(["train", "contrastive", "--config", str(run / "train_config.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "choose another --out" in err
    assert (run / "model" / "model.safetensors").read_bytes() == before


def test_python_recipes_take_a_runs_settings_too(first_run):
    """README: a recipe takes the same keys as --config; from Python the run's record keys and VQA's answer count
    are left out the same way."""
    from polymodal.train.vqa import VQARecipe

    saved = json.loads((first_run("vqa")[0] / "train_config.json").read_text())
    assert isinstance(saved["arch"]["answers"], int) and "train_questions" in saved
    recipe = VQARecipe.from_dict(saved)
    recipe.validate()
    assert recipe.arch.answers == [] and recipe.arch.dim == 16 and recipe.train.epochs == 1


def test_a_vqa_run_over_a_pretrained_encoder_is_taken_back(tmp_path):
    """A VQA run continued from a pretrained encoder records its architecture without the MLM/MRM heads it dropped:
    read back with --model, that read as a changed architecture ("keeps its own architecture (mlm_head True ...)")."""
    from polymodal.cli_train import check_arch_of_continued_model
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
    from polymodal.train.vqa import VQARecipe

    FusionEncoder(FusionEncoderConfig(fusion="co_attention", dim=16, mlm_head=True, mrm_head="regress",
                                      itm_head=True)).save(tmp_path / "enc")
    recorded = {"model": str(tmp_path / "enc"), "arch": {"fusion": "co_attention", "dim": 16, "mlm_head": False,
                                                         "mrm_head": "", "itm_head": True}}
    check_arch_of_continued_model(recorded, VQARecipe)
    with pytest.raises(PolymodalError, match=r"keeps its own architecture \(dim 16\)"):  # what does differ still does
        check_arch_of_continued_model({**recorded, "arch": {**recorded["arch"], "dim": 32}}, VQARecipe)


# -- zero-shot labels as CSV ---------------------------------------------------------------------------------------


def test_classify_labels_from_a_csv(data, tmp_path, capsys):
    """A one-column CSV's header was classified as a label, and "cat,a photo of a cat" as one label."""
    (tmp_path / "labels.csv").write_text("label\ncoffee\nrocket\n")
    (tmp_path / "plain.csv").write_text('coffee\n"rocket, launched"\n')
    for name, labels in (("labels.csv", ["coffee", "rocket"]), ("plain.csv", ["coffee", "rocket, launched"])):
        assert cli.main(["classify", str(data / "coffee.jpg"), "--labels-from", str(tmp_path / name), "--json"]) == 0
        assert sorted(x["label"] for x in json.loads(capsys.readouterr().out)[0]["labels"]) == labels
    (tmp_path / "prompts.csv").write_text("label,prompt\ncoffee,a cup of coffee\nrocket,a rocket\n")
    (tmp_path / "wide.csv").write_text("coffee\nrocket, moon\n")
    for name, says in (("prompts.csv", "other columns (prompt) would be ignored"),
                       ("wide.csv", "wide.csv:2 holds several cells in a one-column CSV")):
        assert cli.main(["classify", str(data / "coffee.jpg"), "--labels-from", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1 and "Traceback" not in err


def test_eval_zeroshot_reads_labelled_photos_and_classes_as_csv(data, tmp_path, capsys):
    (tmp_path / "rows.csv").write_text("image,label,split\n" + "".join(
        f"{data / n}.jpg,{n},{'test' if i < 4 else 'train'}\n" for i, n in enumerate(NAMES)))
    (tmp_path / "classes.csv").write_text("class\n" + "".join(f"{n}\n" for n in NAMES))
    assert cli.main(["eval", "zeroshot", "--labels-file", str(tmp_path / "rows.csv"), "--classes",
                     str(tmp_path / "classes.csv"), "--split", "test", "--model", "lite", "--quiet"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["images"] == 4 and line["split"] == "test" and sorted(line["per_class"]) == NAMES[:4]
    (tmp_path / "bad.csv").write_text("label,prompt\ncat,a cat\n")
    assert cli.main(["eval", "zeroshot", "--labels-file", str(tmp_path / "bad.csv"), "--model", "lite"]) == 2
    assert "needs an image column" in capsys.readouterr().err


def test_train_zeroshot_labels_as_csv(data, tmp_path, caplog):
    (data / "zs-rows.csv").write_text("image,label\n" + "".join(f"{n}.jpg,{n}\n" for n in NAMES))  # photos
    # relative to the file, as in a JSONL
    with caplog.at_level(logging.WARNING):
        _train("contrastive", "--pairs", data / "pairs.jsonl", "--embed-dim", "8", "--zeroshot-labels",
               data / "zs-rows.csv", "--out", tmp_path / "run", *QUIET)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["zeroshot_labels"].endswith(".csv")
    assert any("val/zeroshot_top1" in line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())


# -- plot --json ---------------------------------------------------------------------------------------------------


def test_plot_json_names_the_picture_and_the_runs_final_and_best_epochs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = [{"step": 0, "epoch": 0, "split": "val", "val/rsum": 2.0},  # scored before training (a --model run)
            {"step": 1, "split": "train", "loss": 3.0, "lr": 1e-3},
            {"step": 1, "epoch": 1, "split": "val", "train_loss": 3.0, "val/rsum": 2.5},
            {"step": 2, "split": "train", "loss": 2.0, "lr": 1e-4},
            {"step": 2, "epoch": 2, "split": "val", "train_loss": 2.0, "val/rsum": 2.5},  # a tie: the later is kept
            {"step": 3, "epoch": 3, "split": "val", "train_loss": 1.0, "val/rsum": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "train_config.json").write_text(json.dumps({"train": {"early_stop_metric": "val/rsum"}}))
    assert cli.main(["plot", str(tmp_path), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["out"] == str(tmp_path / "curves.png") and (tmp_path / "curves.png").is_file()
    assert line["metric"] == "val/rsum" and line["final"]["epoch"] == 3 and line["best"]["epoch"] == 2
    (tmp_path / "train_config.json").unlink()  # no validation metric known: the last epoch, as the trainer keeps
    assert cli.main(["plot", str(tmp_path), "--json", "--out", str(tmp_path / "c.svg")]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["out"] == str(tmp_path / "c.svg") and line["metric"] is None and line["best"]["epoch"] == 3
    assert cli.main(["plot", str(tmp_path)]) == 0  # without --json: the path alone, as before
    assert capsys.readouterr().out.strip() == str(tmp_path / "curves.png")
