"""`train captioner` says when the captions' words are unknown to the captioner's vocabulary ([UNK], never written)."""

import json
import logging

from PIL import Image

from polymodal.cli import main


def _pairs(tmp_path, captions):
    rows = []
    for i, caption in enumerate(captions):
        Image.new("RGB", (64, 64), (60 * i, 120, 200)).save(tmp_path / f"p{i}.png")
        rows.append({"image": f"p{i}.png", "caption": caption})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def test_captions_the_vocabulary_lacks_are_warned_of(tmp_path, caplog):
    chinese = _pairs(tmp_path, ["一只狗在草地上奔跑", "两个孩子在海边玩耍", "a dog runs on the grass", "一只猫"])
    with caplog.at_level(logging.WARNING):
        assert main(["train", "captioner", "--pairs", chinese, "--out", str(tmp_path / "zh"), "--epochs", "1",
                     "--batch-size", "4", "--val-fraction", "0.5", "--quiet"]) == 0
    assert "unknown to the captioner's vocabulary" in caplog.text and "e.g. '" in caplog.text
    caplog.clear()
    english = _pairs(tmp_path, ["a dog runs on the grass", "two children play by the sea", "a cat", "a café"])
    with caplog.at_level(logging.WARNING):
        assert main(["train", "captioner", "--pairs", english, "--out", str(tmp_path / "en"), "--epochs", "1",
                     "--batch-size", "4", "--val-fraction", "0.5", "--quiet"]) == 0
    assert "unknown to the captioner's vocabulary" not in caplog.text
