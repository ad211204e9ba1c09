"""A `train` --out that cannot be made is refused before the data is read and cached, not at the first write."""

import json

import pytest
from PIL import Image

from polymodal.cli import main


@pytest.fixture
def data(tmp_path):
    rows, qa = [], []
    for i in range(4):
        Image.new("RGB", (48, 48), (60 * i, 30, 90)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"a square of shade {i}"})
        qa.append({"image": f"{i}.png", "question": "is it dark?", "answer": "yes" if i < 2 else "no"})
    (tmp_path / "pairs.jsonl").write_text("\n".join(map(json.dumps, rows)))
    (tmp_path / "qa.jsonl").write_text("\n".join(map(json.dumps, qa)))
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path


@pytest.mark.parametrize("task, data_flag", [("contrastive", "--pairs"), ("captioner", "--pairs"),
                                             ("pretrain", "--pairs"), ("vqa", "--qa")])
def test_out_under_a_file_is_refused_before_caching(data, task, data_flag, monkeypatch, capsys):
    monkeypatch.setenv("POLYMODAL_CACHE", str(data / "cache"))
    source = data / ("qa.jsonl" if data_flag == "--qa" else "pairs.jsonl")
    assert main(["train", task, data_flag, str(source), "--out", str(data / "a-file" / "run")]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
    assert not (data / "cache").exists()  # nothing was encoded first


def test_a_folder_without_write_permission_is_refused(data, monkeypatch, capsys):
    import polymodal.train.guards as guards

    real_access = guards.os.access
    monkeypatch.setattr(guards.os, "access", lambda path, mode: False if str(path) == str(data) else real_access(path, mode))
    assert main(["train", "contrastive", "--pairs", str(data / "pairs.jsonl"), "--out", str(data / "run")]) == 2
    assert f"no permission to write in {data}" in capsys.readouterr().err


def test_export_out_under_a_file_is_refused_before_the_model_loads(data, monkeypatch, capsys):
    import polymodal

    monkeypatch.setattr(polymodal, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    assert main(["export", "onnx", "lite", "--out", str(data / "a-file" / "export")]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err


def test_index_db_under_a_file_is_refused_before_the_model_loads(data, monkeypatch, capsys):
    import polymodal.cli as cli

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    assert main(["index", str(data), "--db", str(data / "a-file" / "db")]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
