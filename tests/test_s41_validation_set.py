"""--resume refuses other validation pairs than the run chose its best epoch on: another --val-pairs file, the same
file edited, or a --val-fraction split of changed --pairs (the kept epoch's score was taken on other photos)."""

import json
import shutil

import pytest

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS

NAMES = sorted(SKIMAGE_PHOTOS)


def _write(path, names, gallery, template="{}"):
    path.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": template.format(
        SKIMAGE_PHOTOS[n][1])}) + "\n" for n in names))
    return str(path)


TRAIN = {
    "contrastive": ["train", "contrastive", "--embed-dim", "32", "--batch-size", "4"],
    "captioner": ["train", "captioner", "--batch-size", "4", "--val-images", "2"],
    "pretrain": ["train", "pretrain", "--dim", "32", "--batch-size", "8", "--objectives", "itm:1"],
}


@pytest.fixture(scope="module", params=sorted(TRAIN))
def one_epoch(request, gallery, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"s41-{request.param}")
    train = _write(folder / "train.jsonl", NAMES[:6], gallery)
    val = _write(folder / "val.jsonl", NAMES[6:9], gallery)
    args = TRAIN[request.param] + ["--pairs", train, "--quiet"]
    assert cli.main(args + ["--val-pairs", val, "--out", str(folder / "run"), "--epochs", "1"]) == 0
    return request.param, folder, args


def _resume(one_epoch, tmp_path, *flags) -> list:
    kind, folder, args = one_epoch
    run = tmp_path / "run"
    shutil.copytree(folder / "run", run)
    code = cli.main(args + ["--out", str(run), "--epochs", "2", "--resume", *flags])
    epochs = [json.loads(line).get("epoch") for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [code, max(e for e in epochs if e is not None)]


def test_resume_refuses_another_validation_file(one_epoch, gallery, tmp_path, capsys):
    other = _write(tmp_path / "other.jsonl", NAMES[9:12], gallery)
    capsys.readouterr()
    assert _resume(one_epoch, tmp_path, "--val-pairs", other) == [2, 1]  # refused, nothing trained
    err = capsys.readouterr().err
    assert "chose its best epoch on 3 captions of 3 photos and this data validates on other ones" in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_resume_refuses_the_validation_file_edited(one_epoch, gallery, tmp_path, capsys):
    kind, folder, _ = one_epoch
    edited = _write(tmp_path / "val.jsonl", NAMES[6:9], gallery, "{} (checked)")  # same photos, other captions
    capsys.readouterr()
    assert _resume(one_epoch, tmp_path, "--val-pairs", edited)[0] == 2
    assert "validates on other ones" in capsys.readouterr().err


def test_resume_on_the_same_validation_pairs_moved_elsewhere_runs(one_epoch, gallery, tmp_path):
    moved = tmp_path / "moved"
    moved.mkdir()
    for n in NAMES[6:9]:
        shutil.copy(gallery / f"{n}.jpg", moved / f"{n}.jpg")
    val = _write(tmp_path / "val-copy.jsonl", NAMES[6:9], moved)
    assert _resume(one_epoch, tmp_path, "--val-pairs", val) == [0, 2]


def test_resume_refuses_a_split_of_changed_training_pairs(gallery, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    args = TRAIN["contrastive"] + ["--pairs", str(pairs), "--val-fraction", "0.3", "--out", str(tmp_path / "run"),
                                   "--quiet"]
    _write(pairs, NAMES[:8], gallery)
    assert cli.main(args + ["--epochs", "1"]) == 0
    _write(pairs, NAMES, gallery)  # photos added: the split draws other validation photos
    capsys.readouterr()
    assert cli.main(args + ["--epochs", "2", "--resume"]) == 2
    assert "validates on other ones" in capsys.readouterr().err
