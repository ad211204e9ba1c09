"""`train captioner --model RUN` (the run folder, or its checkpoint) names RUN/model, as eval and caption do."""

import json

from PIL import Image

from polymodal.cli import main


def test_continuing_from_a_run_folder_names_its_model(tmp_path, capsys):
    rows = []
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 120, 200)).save(tmp_path / f"p{i}.png")
        rows.append({"image": f"p{i}.png", "caption": f"a photo number {i}"})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert main(["train", "captioner", "--pairs", str(pairs), "--out", str(run), "--epochs", "1", "--batch-size", "4",
                 "--val-fraction", "0.5", "--quiet"]) == 0
    capsys.readouterr()
    for given in (run, run / "checkpoint.pt"):
        assert main(["train", "captioner", "--pairs", str(pairs), "--out", str(tmp_path / "more"), "--model",
                     str(given), "--quiet"]) == 2
        assert f"model is {run / 'model'}: pass that" in capsys.readouterr().err
    assert not (tmp_path / "more").exists()
