"""What a review of captioner training and export found (stop 42): a resume that named another starting model was
silently recorded (its photos claimed as trained on), and the export's examples named sample photos by their pixels."""

import json

import numpy as np
from PIL import Image

import test_captioner
from polymodal.cli import main
from test_caption_audit import COLOURED, export_stand_ins  # noqa: F401 - a fixture

fresh = test_captioner.fresh


def _pairs(tmp_path, n=4):
    rows = []
    for i in range(n):
        img = Image.new("RGB", (64, 64), "white")
        img.paste((40 * i % 256, 20, 220 - 30 * i % 200), (10, 10, 40 + i, 50))
        img.save(tmp_path / f"p{i}.png")
        rows += [{"image": f"p{i}.png", "caption": f"a photo with {i} squares"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "train.jsonl")


def test_resume_refuses_another_starting_model(tmp_path, capsys, monkeypatch):
    import polymodal

    run = str(tmp_path / "run")
    assert main(["train", "captioner", "--pairs", _pairs(tmp_path), "--out", run, "--epochs", "1", "--batch-size", "4",
                 "--val-fraction", "0.5", "--quiet"]) == 0
    capsys.readouterr()
    photos = (tmp_path / "run" / "model" / "training_photos.txt").read_text()
    # the checkpoint's weights would continue anyway: only the record would change, claiming the captioner's photos
    monkeypatch.setattr(polymodal, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a model loaded")))
    assert main(["train", "captioner", "--out", run, "--resume", "--epochs", "2", "--model", "captioner",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was trained with --model new (asked now: captioner)" in err and "Traceback" not in err
    assert (tmp_path / "run" / "model" / "training_photos.txt").read_text() == photos
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["model"] == "new"


def test_the_export_report_names_photos_given_as_pixels_by_number(export_stand_ins, tmp_path):  # noqa: F811
    from polymodal.export.caption_export import export_captioner_onnx

    model, photos = export_stand_ins
    pixels = [np.asarray(Image.open(p)) for p in photos[:3]]  # as `export onnx captioner` passes the sample photos
    references = [[COLOURED[tuple(int(v) for v in a[0, 0])]] for a in pixels]
    report = export_captioner_onnx(model, tmp_path / "out", pixels, references, variants=[])
    assert [name for name, _ in report["examples"]] == [f"photo {i + 1} ({r[0]})" for i, r in enumerate(references)]
    named = export_captioner_onnx(model, tmp_path / "files", [str(p) for p in photos[:2]], variants=[])
    assert [name for name, _ in named["examples"]] == [str(p)[-60:] for p in photos[:2]]


def test_caption_json_help_names_the_error_lines_it_writes(tmp_path, capsys, monkeypatch):
    import pytest

    import polymodal.cli_caption as cli_caption

    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), "red").save(good)
    (tmp_path / "bad.png").write_text("not an image")
    model = type("M", (), {"caption": lambda self, images, **kw: ["a red square"] * len(images)})()
    monkeypatch.setattr(cli_caption, "load_captioner_model", lambda *a: model)
    assert main(["caption", str(good), str(tmp_path / "bad.png"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [sorted(line) for line in lines] == [["caption", "image"], ["error", "image"]]
    with pytest.raises(SystemExit):
        main(["caption", "--help"])
    assert "{image, error}" in " ".join(capsys.readouterr().out.split())
