"""What a review of the training recipes found (stop 36): the model a zero-shot-validated run keeps, resumes that
would change the validation split or forget earlier photos, runs killed before their first checkpoint, early-stopped
runs resumed, and --config values of the wrong type."""

import json
import time

import numpy as np
import pytest
import torch

import polymodal
from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS
from polymodal.train.metrics import read_metrics
from polymodal.training_photos import read_validation_photos


LABELLED = ("cat", "coffee", "rocket")  # zero-shot photos kept out of the training pairs


def fingerprint(model) -> float:
    return float(sum(v.double().sum() for v in model.state_dict().values() if v.is_floating_point()))


@pytest.fixture()
def caption_data(gallery, tmp_path):
    pairs, labels = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": d}) + "\n"
                             for n, (_, d) in SKIMAGE_PHOTOS.items() if n not in LABELLED))
    labels.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "label": n}) + "\n"
                              for n in LABELLED))
    return pairs, labels


def test_a_zero_shot_validated_run_keeps_its_best_epoch_not_its_last(caption_data, tmp_path, monkeypatch, capsys):
    """RUN/model held the last epoch: the save after fit() replaced the best one that on_best had saved."""
    import polymodal.eval.zeroshot as zeroshot

    scores, seen = iter([0.3, 0.9, 0.5]), []

    def scripted(model, images, labels, **kw):  # epoch 2 scores best; each call notes the weights it scored
        seen.append(fingerprint(model))
        top1 = next(scores)
        return {"top1": top1, "top5": top1}

    monkeypatch.setattr(zeroshot, "zeroshot_accuracy", scripted)
    pairs, labels = caption_data
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--val-fraction", "0", "--zeroshot-labels",
                     str(labels), "--out", str(tmp_path / "run"), "--quiet", "--epochs", "3", "--batch-size", "4",
                     "--embed-dim", "32", "--lr", "0.05", "--patience", "5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["best"]["epoch"] == 2 and len(seen) == 3 and len(set(seen)) == 3
    kept = fingerprint(polymodal.load(tmp_path / "run" / "model"))
    assert kept == pytest.approx(seen[1], rel=1e-9) and kept != pytest.approx(seen[2], rel=1e-9)
    # the labelled photos chose that epoch: eval warns of them as it does of validation pairs' photos
    assert len(read_validation_photos(tmp_path / "run" / "model")) == 3


def train(pairs, out, *extra) -> int:
    return cli.main(["train", "contrastive", "--pairs", str(pairs), "--out", str(out), "--quiet", "--batch-size", "4",
                     "--embed-dim", "32", *extra])


def test_an_early_stopped_run_is_finished_for_resume(caption_data, tmp_path, monkeypatch, capsys):
    """Each plain --resume of an early-stopped run trained one more epoch (and stopped again)."""
    import polymodal.eval.zeroshot as zeroshot

    scores = iter([0.9, 0.5, 0.7])
    monkeypatch.setattr(zeroshot, "zeroshot_accuracy", lambda *a, **kw: dict.fromkeys(("top1", "top5"), next(scores)))
    pairs, labels = caption_data
    run = tmp_path / "run"
    common = ["--val-fraction", "0", "--zeroshot-labels", str(labels), "--epochs", "10"]
    assert train(pairs, run, *common, "--patience", "1") == 0  # epoch 2 did not improve: stopped
    capsys.readouterr()
    assert train(pairs, run, *common, "--patience", "1", "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not improve in its last 1 of 2 epochs, which --patience 1 counts as an early stop" in err and "pass --patience 2 or more" in err
    assert train(pairs, run, *common, "--patience", "2", "--resume") == 0  # as the message says: one more epoch
    assert [r["epoch"] for r in read_metrics(run) if r["split"] == "val"] == [1, 2, 3]


def test_a_run_killed_before_its_first_checkpoint_says_to_overwrite(caption_data, tmp_path, capsys):
    pairs, _ = caption_data
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text("{}")  # what SIGKILL or the out-of-memory killer leaves
    assert train(pairs, run, "--resume") == 2
    err = capsys.readouterr().err
    assert "was killed before its first epoch finished, or the file was deleted); start it again with --overwrite" in err
    (tmp_path / "empty").mkdir()
    assert train(pairs, tmp_path / "empty", "--resume") == 2
    assert "start a run there without --resume" in capsys.readouterr().err  # nothing there at all: the plain advice


@pytest.mark.parametrize("changed, message", [
    (["--seed", "1"], "--seed 0 (asked now: 1)"),
    (["--val-fraction", "0.3"], "--val-fraction 0.2 (asked now: 0.3)"),
])
def test_resume_refuses_another_validation_split(caption_data, tmp_path, capsys, changed, message):
    pairs, _ = caption_data
    run = tmp_path / "run"
    assert train(pairs, run, "--epochs", "1", "--val-fraction", "0.2") == 0
    capsys.readouterr()
    assert train(pairs, run, "--epochs", "2", "--val-fraction", "0.2", "--resume", *changed) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_resume_on_other_photos_keeps_the_earlier_ones_in_the_list(gallery, tmp_path, capsys):
    from polymodal.training_photos import photo_hashes, read_training_photos

    names = list(SKIMAGE_PHOTOS)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, part in ((first, names[:6]), (second, names[6:])):
        path.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": SKIMAGE_PHOTOS[n][1]})
                                + "\n" for n in part))
    run = tmp_path / "run"
    assert train(first, run, "--epochs", "1", "--val-fraction", "0") == 0
    assert train(second, run, "--epochs", "2", "--val-fraction", "0", "--resume") == 0
    recorded = read_training_photos(run / "model")
    assert photo_hashes(gallery / f"{n}.jpg" for n in names) <= recorded  # both sessions' photos


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from polymodal.train.objectives import Objective
    from polymodal.train.trainer import TrainConfig, Trainer

    class Fit(Objective):
        def __init__(self, stop_at=None):
            self.calls, self.stop_at = 0, stop_at

        def compute(self, model, batch):
            self.calls += 1
            if self.calls == self.stop_at:
                raise KeyboardInterrupt  # killed in epoch 3, after its first steps were logged
            x, y = batch
            return ((model(x) - y) ** 2).mean(), {}

    def trainer(objective):
        torch.manual_seed(0)
        x = torch.randn(32, 4)
        loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
        return Trainer(nn.Linear(4, 1), {"fit": (objective, 1.0, loader)},
                       TrainConfig(epochs=3, warmup_steps=0, patience=0, log_every=1), tmp_path / "run", progress=False)

    with pytest.raises(KeyboardInterrupt):
        trainer(Fit(stop_at=11)).fit()
    # TensorBoard reads a run's event files in name order: time in seconds, host, pid, then the process's count of
    # writers, so within one second the 10th writer's file (".10") came before the 9th's (".9") in a test process
    # that had trained 9 times (a resume in a new process, as users make, has another second or pid)
    time.sleep(1.01 - time.time() % 1)
    trainer(Fit()).fit(resume=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 12, steps


@pytest.mark.parametrize("spec, message", [
    ({"itm": "heavy"}, "objective weight 'heavy' is not a number"),
    ({"itm": None}, "objective weight None is not a number"),
    (5, "objectives must name pretraining objectives, got 5"),
    (["itm", 2], "objectives must name pretraining objectives, got ['itm', 2]"),
    ("itm:0", "objective itm needs a positive weight"),
    ("itm:x", "objective weight 'x' is not a number"),
])
def test_objectives_of_the_wrong_type_are_one_error(spec, message):
    from polymodal.errors import PolymodalError
    from polymodal.train.pretrain import parse_objectives

    with pytest.raises(PolymodalError) as refused:
        parse_objectives(spec)
    assert message in str(refused.value)
    assert parse_objectives(["itm", "mlm:0.5"]) == {"itm": 1.0, "mlm": 0.5}


@pytest.mark.parametrize("config, message", [
    ({"freeze": [1]}, 'freeze takes part names ("projections,fusion" or a list of them), got [1]'),
    ({"objectives": {"itm": None}}, "objective weight None is not a number"),
])
def test_pretrain_config_values_of_the_wrong_type_are_one_line(caption_data, tmp_path, capsys, config, message):
    pairs, _ = caption_data
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert cli.main(["train", "pretrain", "--pairs", str(pairs), "--out", str(tmp_path / "run"), "--quiet",
                     "--config", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_model_given_as_a_number_is_one_line(caption_data, tmp_path, capsys):
    pairs, _ = caption_data
    (tmp_path / "c.json").write_text('{"model": 5}')
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--out", str(tmp_path / "run"), "--quiet",
                     "--config", str(tmp_path / "c.json")]) == 2
    assert "setting model must be a string, got 5" in capsys.readouterr().err


@pytest.mark.parametrize("written_by_the_command, said", [
    (False, "no epoch had finished; {out} holds the run --overwrite was to replace, as before"),  # the old run's
    (True, "{out} keeps the last finished epoch; run the same command with --resume instead of --overwrite to "
           "continue"),  # the new run's first epoch (or its last, then RUN/model's save)
])
def test_ctrl_c_of_an_overwrite_gives_advice_that_works(tmp_path, monkeypatch, capsys, written_by_the_command, said):
    """Stopped before training began, an --overwrite run said 'run the same command with --resume', which is refused
    beside --overwrite, and without it resumed the old run. Judged by the checkpoint file's identity, not its time
    (a file server's clock may lag this machine's)."""
    import os

    from polymodal.cache import atomic_write_bytes
    from polymodal.train import contrastive

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"old run")
    os.utime(out / "checkpoint.pt", (1, 1))

    def interrupted(*args, **kwargs):
        if written_by_the_command:
            atomic_write_bytes(out / "checkpoint.pt", b"old run")  # same bytes, even an old time: still a new file
            os.utime(out / "checkpoint.pt", (1, 1))
        raise KeyboardInterrupt

    monkeypatch.setattr(contrastive, "train_contrastive", interrupted)
    assert cli.main(["train", "contrastive", "--pairs", str(tmp_path / "p.jsonl"), "--out", str(out),
                     "--overwrite"]) == 130
    assert capsys.readouterr().err.strip() == "polymodal: interrupted: " + said.format(out=out)


# -- copies of one photo under two names ----------------------------------------------------------------------------
def pairs_with_copies(tmp_path, copies: int):
    """12 distinct photos, the first ``copies`` of them saved a second time under another name."""
    from PIL import Image

    from polymodal.data.pairs import Pair, PairSet

    rng = np.random.default_rng(0)
    pairs = []
    for i in range(12):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
        pairs.append(Pair(image=path, caption=f"photo {i}"))
        if i < copies:
            twin = tmp_path / f"again-{i}.png"
            twin.write_bytes(path.read_bytes())
            pairs.append(Pair(image=twin, caption=f"photo {i} again"))
    return PairSet.from_pairs(pairs)


@pytest.mark.parametrize("split", ["split_by_image", "split_pairs_by_image"])  # (the second: pretraining's)
def test_a_copy_of_a_training_photo_never_validates(tmp_path, caplog, split):
    import logging

    from polymodal.data import pairs as pairs_module
    from polymodal.train import pretrain
    from polymodal.training_photos import photo_hash

    pairs = pairs_with_copies(tmp_path, copies=12)  # every photo twice
    with caplog.at_level(logging.WARNING):
        train, val = (getattr(pairs_module, split, None) or getattr(pretrain, split))(pairs, 0.25, seed=0)
    train_hashes = {photo_hash(p) for p in train.images}
    assert val.images and not {photo_hash(p) for p in val.images} & train_hashes
    assert len(train.images) + len(val.images) == 24 and "copies of training photos" in caplog.text


def test_a_set_without_copies_keeps_its_split(tmp_path, caplog):
    import logging

    from polymodal.data.pairs import split_by_image
    from polymodal.data.augment import make_rng

    pairs = pairs_with_copies(tmp_path, copies=0)
    with caplog.at_level(logging.WARNING):
        train, val = split_by_image(pairs, 0.25, seed=3)
    order = make_rng(3).permutation(12)  # the split runs resumed before this change were made with
    assert sorted(map(str, val.images)) == sorted(str(pairs.images[i]) for i in order[:3])
    assert "copies" not in caplog.text


def test_val_pairs_that_are_renamed_copies_are_warned_of(tmp_path, caplog):
    import logging

    from polymodal.train.guards import warn_of_shared_photos

    pairs = pairs_with_copies(tmp_path, copies=2)
    originals, again = [p for p in pairs.images if "again" not in str(p)], [p for p in pairs.images if "again" in str(p)]
    with caplog.at_level(logging.WARNING):
        warn_of_shared_photos(originals, [*again, again[0]], "--val-pairs")
    assert "2 of the 2 validation photos (--val-pairs) are training photos too" in caplog.text


def test_a_save_that_fails_midway_leaves_the_previous_model_whole(tmp_path):
    from polymodal.training_photos import TrainingPhotos

    folder = tmp_path / "run" / "model"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"old weights")
    (folder / "config.json").write_text('{"version": "old"}')

    class Killed:
        def save(self, where):
            (where / "model.safetensors").write_bytes(b"new weights")
            raise KeyboardInterrupt  # before its config.json

    with pytest.raises(KeyboardInterrupt):
        TrainingPhotos([]).save(Killed(), folder)
    assert (folder / "model.safetensors").read_bytes() == b"old weights"
    assert (folder / "config.json").read_text() == '{"version": "old"}'
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no staging folder left behind

    class Saved:
        def save(self, where):
            (where / "model.safetensors").write_bytes(b"new weights")
            (where / "config.json").write_text('{"version": "new"}')

    TrainingPhotos([]).save(Saved(), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "training_photos.txt"]
    assert (folder / "config.json").read_text() == '{"version": "new"}'


def test_the_vqa_split_moves_copies_to_training_too(tmp_path):
    from polymodal.eval.vqa import QARow
    from polymodal.train.vqa import split_by_image
    from polymodal.training_photos import photo_hash

    pairs = pairs_with_copies(tmp_path, copies=8)
    rows = [QARow(image=str(p), question="what is it?", answer="a photo") for p in pairs.images]
    train, val = split_by_image(rows, 0.25, seed=0)
    assert val and not {photo_hash(r.image) for r in val} & {photo_hash(r.image) for r in train}


def test_same_sized_files_are_told_apart_without_reading_them_whole(tmp_path, monkeypatch):
    from PIL import Image

    import polymodal.training_photos as tp

    rng = np.random.default_rng(1)
    files = []
    for i in range(6):  # BMPs of one size: every file the same length, none a copy
        path = tmp_path / f"{i}.bmp"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        files.append(path)
    hashed = []
    monkeypatch.setattr(tp, "photo_hash", lambda image: hashed.append(image) or "same")
    assert tp.copies_across(files[:3], files[3:]) == [] and hashed == []  # their first 64 KiB differ
    assert tp.copies_across(files[:3], [tmp_path / "x.tar#0.jpg", files[0]]) == [1]  # by name, shard refs too


def test_another_seed_is_taken_on_resume_when_validation_pairs_are_given(caption_data, tmp_path, capsys):
    pairs, _ = caption_data
    run = tmp_path / "run"
    assert train(pairs, run, "--epochs", "1", "--val-pairs", str(pairs)) == 0
    assert train(pairs, run, "--epochs", "2", "--val-pairs", str(pairs), "--resume", "--seed", "1") == 0  # no split


def test_names_and_ids_of_any_iterable_or_size():
    from types import MappingProxyType

    from polymodal.models.inputs import as_parts
    from polymodal.train.pretrain import parse_objectives

    assert parse_objectives({"itm": 1.0}.keys()) == {"itm": 1.0} and as_parts({"fusion"}) == ["fusion"]
    assert parse_objectives(MappingProxyType({"itm": 1.0, "mlm": 0.5})) == {"itm": 1.0, "mlm": 0.5}  # weights kept


def test_another_seed_is_taken_on_resume_without_validation(caption_data, tmp_path):
    pairs, _ = caption_data
    assert train(pairs, tmp_path / "run", "--epochs", "1", "--val-fraction", "0") == 0
    assert train(pairs, tmp_path / "run", "--epochs", "2", "--val-fraction", "0", "--resume", "--seed", "1") == 0


def test_pretraining_refuses_another_seed_with_validation_pairs(tmp_path, capsys):
    """Its seed also draws the validation negatives and masks: the restored best score would be another set's."""
    from polymodal.errors import PolymodalError
    from polymodal.train.run_settings import check_same_run

    (tmp_path / "train_config.json").write_text(json.dumps({"train": {"seed": 0}, "arch": {}}))
    with pytest.raises(PolymodalError, match=r"--seed 0 \(asked now: 1\)"):
        check_same_run(tmp_path, {}, {"seed": 1}, val_fraction=None, seed_draws_validation=True)
    check_same_run(tmp_path, {}, {"seed": 1}, val_fraction=None, seed_draws_validation=False)


def test_remove_ids_past_sqlites_integers_are_not_found(tmp_path):
    from polymodal.index import ImageIndex
    from test_index import FakeModel, paint

    index = ImageIndex(tmp_path / "db")
    index.update(paint(tmp_path / "p" / "red.png", "red").parent, FakeModel(), progress=False)
    assert index.remove_ids([2**64, -2**70]) == {} and len(index) == 1
