"""`train contrastive` review (stop 42): the early-stopping metric and the zero-shot labels that choose the epoch kept."""

import json

import pytest

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.errors import PolymodalError
from polymodal.train.trainer import TrainConfig
from test_train_guards import _one_line_error


@pytest.fixture(scope="module")
def data(gallery, tmp_path_factory):
    folder = tmp_path_factory.mktemp("s42")
    names = list({**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS})
    pairs, labels, fewer = folder / "pairs.jsonl", folder / "labels.jsonl", folder / "fewer.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": d}) + "\n"
                             for n, (_, d) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items()))
    rows = [json.dumps({"image": str(gallery / f"{n}.jpg"), "label": ("animal", "thing", "place")[i % 3]}) + "\n"
            for i, n in enumerate(names)]
    labels.write_text("".join(rows))
    fewer.write_text("".join(rows[:6]))
    return {"pairs": pairs, "labels": labels, "fewer": fewer}


def _train(data, out, *extra) -> list[str]:
    return ["train", "contrastive", "--pairs", str(data["pairs"]), "--out", str(out), "--quiet", "--embed-dim", "16",
            "--batch-size", "4", *map(str, extra)]


@pytest.mark.parametrize("metric", ["val/t2i_median_rank", "val/i2t_median_rank", "val/loss", "train_loss"])
def test_an_early_stop_metric_that_is_lower_when_better_is_refused(metric):
    # the loop keeps the epoch with the highest value: a median rank kept the epoch that ranked worst
    with pytest.raises(PolymodalError, match="lower when better"):
        TrainConfig(early_stop_metric=metric).validate()
    TrainConfig(early_stop_metric="val/neg_loss").validate()  # the captioner's negated loss is a score
    TrainConfig(early_stop_metric="val/t2i_R@5").validate()


def test_a_median_rank_metric_is_one_line_before_any_folder(data, tmp_path, capsys):
    config = tmp_path / "es.json"
    config.write_text(json.dumps({"early_stop_metric": "val/i2t_median_rank"}))
    _one_line_error(capsys, _train(data, tmp_path / "run", "--config", config), "lower when better")
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_zero_shot_labels_when_they_chose_the_epoch(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_train(data, run, "--val-fraction", "0", "--zeroshot-labels", data["labels"],
                           "--epochs", "1")) == 0
    capsys.readouterr()
    before = (run / "checkpoint.pt").read_bytes()
    # another labels file: its top-1 would be compared with the best one taken on other photos
    _one_line_error(capsys, ["train", "contrastive", "--out", run, "--resume", "--epochs", "2", "--quiet",
                             "--zeroshot-labels", data["fewer"]], "chose its best epoch on 15 labels of 15 photos")
    # no labels at all: the run's metric would go unreported (epochs kept by the training loss)
    _one_line_error(capsys, ["train", "contrastive", "--out", run, "--resume", "--epochs", "2", "--quiet",
                             "--zeroshot-labels", ""], "is zero-shot accuracy on --zeroshot-labels")
    assert (run / "checkpoint.pt").read_bytes() == before
    assert cli.main(["train", "contrastive", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0


def test_other_zero_shot_labels_are_taken_when_recall_chooses_the_epoch(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_train(data, run, "--val-pairs", data["pairs"], "--zeroshot-labels", data["labels"],
                           "--epochs", "1")) == 0
    assert cli.main(["train", "contrastive", "--out", str(run), "--resume", "--epochs", "2", "--quiet",
                     "--zeroshot-labels", str(data["fewer"])]) == 0


def test_a_zero_shot_metric_without_labels_is_refused_up_front(data, tmp_path, capsys):
    config = tmp_path / "es.json"
    config.write_text(json.dumps({"early_stop_metric": "val/zeroshot_top1"}))
    _one_line_error(capsys, _train(data, tmp_path / "run", "--val-fraction", "0", "--config", config),
                    "is zero-shot accuracy on --zeroshot-labels")
    assert not (tmp_path / "run").exists()


def test_a_missing_labels_file_is_said_before_any_photo_is_encoded(data, tmp_path, capsys, monkeypatch):
    from polymodal.train import contrastive

    def encode(*args, **kwargs):
        raise AssertionError("photos encoded before the labels file was read")

    monkeypatch.setattr(contrastive, "image_features", encode)
    _one_line_error(capsys, _train(data, tmp_path / "run", "--zeroshot-labels", tmp_path / "nope.jsonl"),
                    "labels file not found")


def test_resume_refuses_another_starting_model_and_takes_the_same_one(data, tmp_path, capsys, monkeypatch):
    """As captioner runs (tests/test_s42_captrain.py): the checkpoint continues whatever --model says, so another
    one would only be recorded, its training photos claimed."""
    run = tmp_path / "run"
    assert cli.main(_train(data, run, "--val-pairs", data["pairs"], "--epochs", "1")) == 0
    assert cli.main(_train(data, tmp_path / "other", "--val-pairs", data["pairs"], "--epochs", "1")) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["train", "contrastive", "--out", run, "--resume", "--epochs", "2", "--quiet",
                             "--model", tmp_path / "other" / "model"], "was trained with --model lite (asked now:")
    monkeypatch.chdir(tmp_path)  # the same model named again (a name as recorded) is fine
    assert cli.main(["train", "contrastive", "--out", "run", "--resume", "--epochs", "2", "--quiet",
                     "--model", "lite"]) == 0
