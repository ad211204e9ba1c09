"""What an upgrade meets (helper s53/upgrade): a yes/no model folder saved by an older polymodal.

A yes/no folder holds only pool statistics and a logistic regression fit in the spaces of its base, which loads by
name (`default`). A copy of coco-yesno saved before `default` was retrained (69b841c) loaded under its same key and
answered from the new spaces: 22 of 200 COCO yes/no answers changed, silently. Such a folder is refused with one
line that says what to do; folders saved now record the base they were fit over ("base_version").
"""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.models import yesno_base
from polymodal.models.yesno import YesNoModel, _empty_state, load_yesno
from polymodal.resources import HERE

DEFAULT_NOW = json.loads((HERE / "models" / "default" / "config.json").read_text())["version"]
YESNO_NOW = json.loads((HERE / "models" / "coco-yesno" / "config.json").read_text())["version"]


def _copy_of_builtin(tmp_path, **config_changes):
    """A copy of the shipped coco-yesno folder with its config.json changed (None: the key removed)."""
    folder = tmp_path / "yesno"
    shutil.copytree(HERE / "models" / "coco-yesno", folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in config_changes.items():
        config.pop(key, None) if value is None else config.__setitem__(key, value)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_yesno_folder_fit_over_an_older_default_is_refused(tmp_path, capsys):
    folder = _copy_of_builtin(tmp_path, base_version="3add725d407c")  # `default` as shipped before 69b841c
    why = rf"fit over another default \(version 3add725d407c; this polymodal's is {DEFAULT_NOW}\)"
    with pytest.raises(PolymodalError, match=why):
        polymodal.load(str(folder))
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(photo)
    assert cli.main(["vqa", str(photo), "is there a dog?", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "save the built-in again" in err[0] and "Traceback" not in err[0]
    assert cli.main(["info", "--model", str(folder)]) == 2  # info says so too (it showed the key, exit 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fit over another default" in err[0]


def test_a_copy_of_the_coco_yesno_shipped_before_69b841c_is_refused(tmp_path, monkeypatch):
    # Such copies record no base_version; they are known by their version (here today's weights stand in for them).
    monkeypatch.setitem(yesno_base.FIT_BEFORE_BASE_VERSION, YESNO_NOW, "3add725d407c")
    folder = _copy_of_builtin(tmp_path, base_version=None)
    with pytest.raises(PolymodalError, match="fit over another default"):
        load_yesno(folder)


def test_saved_yesno_folders_record_their_base(tmp_path):
    copy = polymodal.load("coco-yesno").save(tmp_path / "copy")  # the built-in, saved from Python
    assert json.loads((copy / "config.json").read_text())["base_version"] == DEFAULT_NOW
    assert load_yesno(copy).key == f"coco-yesno@{YESNO_NOW}"

    class Base:  # a model fit in this process over a base that is not the shipped default
        version = "0123456789ab"

    fitted = YesNoModel(_empty_state(), {"name": "mine"}, base=Base()).save(tmp_path / "mine")
    assert json.loads((fitted / "config.json").read_text())["base_version"] == "0123456789ab"
    assert load_yesno(fitted, base=Base()).name == "mine"  # given the base it was fit over, it loads
    with pytest.raises(PolymodalError, match=r"version 0123456789ab; this polymodal's is"):
        load_yesno(fitted)


def test_info_db_says_an_index_of_an_older_builtin_is_stale(tmp_path, capsys):
    # `polymodal info --db` showed an index built with `default` before its retraining as if nothing were wrong,
    # while every search of it is refused
    import sqlite3

    from test_s50_compat import _old_index

    db = tmp_path / "old.idx"
    _old_index(db, "default")  # model_version 63c91bdf6bb2, not today's default
    assert cli.main(["info", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"built with an older default (version 63c91bdf6bb2; this polymodal's is {DEFAULT_NOW})" in out
    assert "index its photos again into a new --db" in out
    with sqlite3.connect(db / "meta.sqlite") as con:  # the same index as today's default would have built it
        con.execute("UPDATE meta SET value = ? WHERE key = 'model_version'", (DEFAULT_NOW,))
    assert cli.main(["info", "--db", str(db), "--json"]) == 0
    assert "stale" not in json.loads(capsys.readouterr().out)["index"]
    other = tmp_path / "mine.idx"
    _old_index(other, "runs/mine/model")  # not a built-in: nothing to compare it with
    assert cli.main(["info", "--db", str(other), "--json"]) == 0
    assert "stale" not in json.loads(capsys.readouterr().out)["index"]
