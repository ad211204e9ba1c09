"""Outputs are whole or absent and readable by others: staged folders, temporary files beside their target, and
one error line (exit 2) when an output path cannot be made."""

from __future__ import annotations

import stat

import pytest
import torch

from polymodal import cli
from polymodal.cache import _umask, atomic_write_bytes, staged_folder


def test_staged_folder_replaces_the_old_folder_only_on_success(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(out) as stage:
            (stage / "half.onnx").write_text("half")
            raise RuntimeError("killed half way")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no .partial left after an error
    with staged_folder(out) as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()  # an ordinary folder, as mkdir makes it


def test_written_files_are_readable_by_other_users(tmp_path):
    from polymodal.export.graphs import export_graph

    atomic_write_bytes(tmp_path / "a.json", b"{}")
    export_graph(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), ["x"], tmp_path / "g.onnx")
    for name in ("a.json", "g.onnx"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~_umask(), name  # not mkstemp's 0600


def test_export_never_replaces_a_folder_that_is_not_an_export(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert cli.main(["export", "onnx", "lite", "--out", str(out)]) == 2
    assert "not a polymodal export" in capsys.readouterr().err
    (out / "onnx_config.json").write_text("{}")  # an earlier export with the user's notes added: still refused
    assert cli.main(["export", "onnx", "lite", "--out", str(out)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    assert cli.main(["export", "onnx", "lite", "--out", str(tmp_path / "new"), "--max-drop-points", "-1"]) == 2
    assert "--max-drop-points" in capsys.readouterr().err and not (tmp_path / "new").exists()


@pytest.mark.parametrize("args, said", [(["plot", "{run}", "--out", "{file}/curves.png"], "Not a directory"),
                                         # checked before the model loads (stop 43): polymodal's own words
                                         (["index", "{pics}", "--db", "{file}/sub.idx"], "is a file, not a folder")])
def test_an_output_path_under_a_file_is_one_error_line(args, said, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "pics").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "pics" / "red.png")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    (tmp_path / "file").write_text("a file, not a folder")
    paths = {"run": tmp_path / "run", "file": tmp_path / "file", "pics": tmp_path / "pics"}
    assert cli.main([a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "file" in err
