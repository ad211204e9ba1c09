"""`train ... --split train,restval --val-split val`: Karpathy-style files train on their training splits only."""

import json

from PIL import Image

from conftest import cli_json
from polymodal.cli import main


def _karpathy(tmp_path):
    (tmp_path / "imgs").mkdir()
    names = [f"{i:03d}.jpg" for i in range(12)]
    for i, name in enumerate(names):  # 12 different photos (a copy would tie in recall and be warned about)
        Image.new("RGB", (40, 40), (i * 20, 255 - i * 20, (i * 70) % 256)).save(tmp_path / "imgs" / name)
    splits = ["train"] * 6 + ["restval"] * 2 + ["val"] * 2 + ["test"] * 2
    document = {"images": [{"filepath": "imgs", "filename": n, "split": s,
                            "sentences": [{"raw": f"a photo of shade {i}"}, {"raw": f"square number {i}"}]}
                           for i, (n, s) in enumerate(zip(names, splits))]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(document))
    return path, names


def test_contrastive_trains_on_the_named_splits_and_validates_on_val_split(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    path, names = _karpathy(tmp_path)
    run = tmp_path / "run"
    code = main(["train", "contrastive", "--pairs", str(path), "--split", "train,restval", "--val-pairs", str(path),
                 "--val-split", "val", "--epochs", "1", "--embed-dim", "8", "--batch-size", "4", "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((run / "train_config.json").read_text())
    assert config["split"] == "train,restval" and config["val_split"] == "val"
    capsys.readouterr()
    test = cli_json(["eval", "retrieval", "--pairs", str(path), "--split", "test", "--model", str(run / "model")])
    val = cli_json(["eval", "retrieval", "--pairs", str(path), "--split", "val", "--model", str(run / "model")])
    train = cli_json(["eval", "retrieval", "--pairs", str(path), "--split", "restval", "--model", str(run / "model")])
    assert (test["seen_in_training"], test["seen_in_validation"]) == (0, 0)
    assert (val["seen_in_training"], val["seen_in_validation"]) == (0, 2)
    assert train["seen_in_training"] == 2


def test_a_split_no_row_carries_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    path, _ = _karpathy(tmp_path)
    assert main(["train", "captioner", "--pairs", str(path), "--split", "training", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "has no rows of split 'training'" in err and "pass one of those to --split" in err
    assert not (tmp_path / "cache").exists()
