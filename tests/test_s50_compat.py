"""What an upgrade meets (helper s50/compat): files an older polymodal wrote, opened by this one.

- A built-in's ONNX export in the cache, made before the built-in was re-shipped (`default` was retrained in 69b841c),
  was served as today's model: other scores, and its key then refused the indexes built with today's `default` with
  advice to index them again. It is refused with one line that says to export it again.
- An index built by an older polymodal with a trained model records that model only by its kind ('dual-encoder'):
  `search --db` (index, serve) said "unknown model 'dual-encoder'", a name the user never typed. It says to pass
  --model.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from PIL import Image

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.index.store import _SCHEMA, SCHEMA_VERSION
from polymodal.resources import HERE

SHIPPED = json.loads((HERE / "models" / "default" / "config.json").read_text())["version"]


def _default_export(cache, version: str):
    """An export of `default` where --runtime onnx looks, stamped with ``version`` (its graphs are not needed: the
    version is checked before they load)."""
    folder = cache / "onnx" / "default"
    folder.mkdir(parents=True)
    (folder / "onnx_config.json").write_text(json.dumps({"type": "onnx_embedding", "name": "default",
                                                         "version": version, "dim": 384}))
    return folder


def test_an_export_of_an_older_builtin_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    _default_export(tmp_path, "3add725d407c")  # `default` as shipped before 69b841c
    with pytest.raises(PolymodalError, match=r"made from an older default \(version 3add725d407c; this polymodal's "
                                             rf"is {SHIPPED}\); export it again with `polymodal export onnx default`"):
        polymodal.load("default", runtime="onnx")
    photo = tmp_path / "photo.png"  # a real photo: a command checks its photos before it loads a model
    Image.new("RGB", (8, 8)).save(photo)
    assert cli.main(["classify", str(photo), "--labels", "a,b", "--model", "default", "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export it again" in err[0]


def test_an_export_of_todays_builtin_passes_the_check(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    _default_export(tmp_path, SHIPPED)
    with pytest.raises(PolymodalError) as caught:  # it gets as far as its (here missing) graphs
        polymodal.load("default", runtime="onnx")
    assert "older default" not in str(caught.value)


def _old_index(db, model_name: str):
    """An index as polymodal wrote it before indexes recorded a trained model's folder (no images needed)."""
    db.mkdir()
    with sqlite3.connect(db / "meta.sqlite") as con:
        for statement in _SCHEMA:
            con.execute(statement)
        meta = {"schema": SCHEMA_VERSION, "uid": "0" * 32, "model": f"{model_name}@63c91bdf6bb2",
                "model_name": model_name, "model_version": "63c91bdf6bb2", "dim": 256, "created": "2026-11-29",
                "updated": "2026-11-29", "generation": 1}
        con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])


@pytest.mark.parametrize("command", [["search", "a dog"], ["index", "PHOTOS"], ["serve", "--port", "0"]])
def test_an_old_index_naming_its_model_by_kind_asks_for_the_model(tmp_path, capsys, command):
    if command[0] == "serve":
        pytest.importorskip("fastapi")
    db = tmp_path / "old.idx"
    _old_index(db, "dual-encoder")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    args = [str(photos) if a == "PHOTOS" else a for a in command]
    assert cli.main([*args, "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records its model only as 'dual-encoder'" in err[0]
    assert "pass --model with that model's folder" in err[0] and "unknown model" not in err[0]


def test_info_says_which_cached_export_is_stale(tmp_path, monkeypatch, capsys):
    """`polymodal info` listed an export made from an older `default` as if it served today's (loading it is
    refused since 485efec): the listing says to export it again."""
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    _default_export(tmp_path, "3add725d407c")
    assert cli.main(["info"]) == 0
    assert "default (made from an older one: export it again)" in capsys.readouterr().out
    assert cli.main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["onnx_exports_stale"] == ["default"]
    (tmp_path / "onnx" / "default" / "onnx_config.json").write_text(json.dumps({"type": "onnx_embedding",
                                                                               "version": SHIPPED}))
    assert cli.main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["onnx_exports_stale"] == []
