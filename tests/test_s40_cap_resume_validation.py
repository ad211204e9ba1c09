"""--resume of a captioner run refuses validation that would change what the kept epoch is compared on."""

import json

from PIL import Image

from polymodal.cli import main


def _pairs(tmp_path, name, first, n):
    rows = []
    for i in range(first, first + n):
        img = Image.new("RGB", (64, 64), "white")
        img.paste((40 * i % 256, 20, 220 - 30 * i % 200), (10, 10, 40 + i, 50))
        img.save(tmp_path / f"p{i}.png")
        rows += [{"image": f"p{i}.png", "caption": f"a photo with {i} squares"}]
    (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / name)


def test_resume_refuses_val_pairs_after_a_split_and_another_val_images(tmp_path, capsys):
    pairs, val = _pairs(tmp_path, "train.jsonl", 0, 4), _pairs(tmp_path, "val.jsonl", 4, 2)
    run = str(tmp_path / "run")
    assert main(["train", "captioner", "--pairs", pairs, "--out", run, "--epochs", "1", "--batch-size", "4",
                 "--val-fraction", "0.5", "--quiet"]) == 0
    capsys.readouterr()
    # the split's 2 validation photos would train, and epoch 2 would be scored on other photos than epoch 1
    assert main(["train", "captioner", "--out", run, "--resume", "--epochs", "2", "--val-pairs", val, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--val-pairs (none: a --val-fraction split) (asked now:" in err and "Traceback" not in err
    assert main(["train", "captioner", "--out", run, "--resume", "--epochs", "2", "--val-images", "1", "--quiet"]) == 2
    assert "--val-images 200 (asked now: 1)" in capsys.readouterr().err
    assert sum('"val"' in line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
