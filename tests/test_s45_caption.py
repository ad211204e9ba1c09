"""Stop-45 caption review: continuing a trained model (`train captioner --model ...`, and the other training
commands' --model) and validating on photos that model was trained on scored it high before any epoch, so RUN/model
could stay it ("no epoch beat the model training started from") with no reason given: the run says why."""

import json
import logging

from PIL import Image

from polymodal.cli import main
from polymodal.training_photos import TrainingPhotos


def _pairs(folder, name, photos):
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"image": p, "caption": f"a photo called {p[:-4]}"}) + "\n" for p in photos))
    return str(path)


def test_validating_on_photos_the_starting_model_learned_is_warned_about(tmp_path, caplog):
    for i in range(6):
        Image.new("RGB", (64, 64), (40 * i, 120, 200 - 30 * i)).save(tmp_path / f"p{i}.png")
    first = tmp_path / "first"
    assert main(["train", "captioner", "--pairs", _pairs(tmp_path, "a", ["p0.png", "p1.png", "p2.png"]),
                 "--out", str(first), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0", "--quiet"]) == 0
    args = ["train", "captioner", "--model", str(first / "model"), "--pairs", _pairs(tmp_path, "b", ["p3.png"]),
            "--epochs", "1", "--batch-size", "4", "--val-images", "2", "--quiet"]
    # two of the three validation photos trained the model the run starts from
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--val-pairs", _pairs(tmp_path, "v1", ["p0.png", "p1.png", "p4.png"]),
                     "--out", str(tmp_path / "r1")]) == 0
    assert "2 of the 3 validation photos are photos the model training starts from" in caplog.text, caplog.text
    # photos it never saw, no validation, or a start that records none: nothing to say
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        TrainingPhotos([], str(first / "model"), [tmp_path / "p4.png", tmp_path / "p5.png"])
        TrainingPhotos([], str(first / "model"))
        TrainingPhotos([], str(tmp_path / "r1" / "nothing"), [tmp_path / "p0.png"])
        TrainingPhotos([], "lite", [tmp_path / "p0.png"])
    assert "the model training starts from" not in caplog.text
    with caplog.at_level(logging.WARNING):
        TrainingPhotos([], str(first / "model"), [tmp_path / "p2.png", tmp_path / "p5.png"])
    assert "1 of the 2 validation photos" in caplog.text
