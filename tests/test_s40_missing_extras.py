"""An optional package that is not installed is one line naming the extra that brings it (exit 2), never a
traceback or a server that starts and then answers every upload with a 500. A module set to None in sys.modules
fails to import exactly as an uninstalled one does."""

import json
import sys

import pytest
from starlette import formparsers

from polymodal.cli import main
from polymodal.index import ImageIndex

from test_index import FakeModel
from test_qdrant import _photos


def test_plot_without_matplotlib_names_the_train_extra(tmp_path, capsys, monkeypatch):
    row = {"step": 1, "epoch": 1, "split": "train", "loss": 1.0, "lr": 1e-3}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(tmp_path)]) == 2
    assert "plotting needs matplotlib (the train extra): pip install 'polymodal[train]'" in capsys.readouterr().err


def test_qdrant_push_without_the_client_names_the_qdrant_extra(tmp_path, capsys, monkeypatch):
    db = tmp_path / "db"
    ImageIndex(db).update(_photos(tmp_path / "pics", ["red", "blue"]), FakeModel(), progress=False)
    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    assert main(["index", "--db", str(db), "--qdrant", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "needs the qdrant extra: pip install 'polymodal[qdrant]'" in err and "Traceback" not in err


def test_serve_without_python_multipart_refuses_to_start(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(formparsers, "multipart", None)  # what Starlette sets when python-multipart is missing
    assert main(["serve", "--db", str(tmp_path / "db")]) == 2
    assert "serving needs the serve extra (python-multipart is missing)" in capsys.readouterr().err


@pytest.mark.parametrize("rows, expected", [
    ([{"image": "a.jpg", "question": "q", "answer": "yes"}], 'carry no "split" field; leave --split out'),
    ([{"image": "a.jpg", "question": "q", "answer": "yes", "split": "train"}], "pass one of those to --split"),
])
def test_an_unknown_split_says_what_to_pass(tmp_path, capsys, rows, expected):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "vqa", "--qa", str(qa), "--model", "easy-vqa", "--split", "x"]) == 2
    err = capsys.readouterr().err
    assert expected in err and ("pass one of those" in err) == ("split" in rows[0])
