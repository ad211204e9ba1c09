"""ImageIndex.add(paths): index chosen files from anywhere, next to folders kept in sync by update()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex
from test_index import FakeModel, paint


def names(hits) -> list[str]:
    return sorted(Path(h.path).name for h in hits)


def test_add_indexes_loose_files_and_leaves_other_rows(tmp_path):
    model = FakeModel()
    index = ImageIndex(tmp_path / "db")
    index.update(paint(tmp_path / "album" / "red.png", "red").parent, model, progress=False)
    loose = [paint(tmp_path / "a" / "green.png", "green"), paint(tmp_path / "b" / "blue.jpg", "blue")]
    report = index.add([str(loose[0]), loose[1]], model, progress=False)
    assert (report.added, report.updated, report.unchanged, report.removed) == (2, 0, 0, 0)
    assert len(index) == 3
    assert names(index.search_text(model, "green", k=1)) == ["green.png"]
    assert names(index.search_text(model, "red", k=1)) == ["red.png"]  # the folder's row is untouched
    # a later update of the folder keeps the added files: they are not under it
    assert index.update(tmp_path / "album", model, progress=False).removed == 0
    assert len(index) == 3


def test_add_again_embeds_only_what_changed(tmp_path):
    model = FakeModel()
    index = ImageIndex(tmp_path / "db")
    green = paint(tmp_path / "green.png", "green", mtime=1_000)
    blue = paint(tmp_path / "blue.png", "blue", mtime=1_000)
    index.add([green, blue], model, progress=False)
    seen = model.embedded
    paint(green, "red", mtime=2_000)  # same size, new content
    report = index.add([green, blue, green], model, progress=False)  # a path named twice counts once
    assert (report.added, report.updated, report.unchanged) == (0, 1, 1)
    assert model.embedded == seen + 1
    assert len(index) == 2
    assert names(index.search_text(model, "red", k=1)) == ["green.png"]  # the new content, not the old vector


def test_add_one_path_and_report_the_unusable_ones(tmp_path):
    model = FakeModel()
    index = ImageIndex(tmp_path / "db")
    (tmp_path / "notes.txt").write_text("not an image")
    report = index.add(paint(tmp_path / "red.png", "red"), model, progress=False)
    assert report.added == 1
    report = index.add([tmp_path / "missing.png", tmp_path / "notes.txt", paint(tmp_path / "g.png", "green")],
                       model, progress=False)
    assert report.added == 1
    reasons = dict((Path(p).name, why) for p, why in report.skipped)
    assert set(reasons) == {"missing.png", "notes.txt"}
    assert "cannot stat" in reasons["missing.png"] and "not an image" in reasons["notes.txt"]


@pytest.mark.parametrize("bad, match", [
    ([], "no image to add"),
    (["nowhere.png"], "no image to add: .*nowhere.png: cannot stat"),
    (np.zeros((4, 4, 3), dtype=np.uint8), "takes image file paths, got ndarray"),
    ([np.zeros((4, 4, 3), dtype=np.uint8)], "got a ndarray"),
])
def test_add_refuses_what_it_cannot_index_before_making_files(tmp_path, monkeypatch, bad, match):
    monkeypatch.chdir(tmp_path)
    index = ImageIndex(tmp_path / "db")
    with pytest.raises(PolymodalError, match=match):
        index.add(bad, FakeModel(), progress=False)
    assert not (tmp_path / "db").exists()


def test_add_refuses_a_different_model(tmp_path):
    index = ImageIndex(tmp_path / "db")
    index.add(paint(tmp_path / "red.png", "red"), FakeModel(), progress=False)
    with pytest.raises(PolymodalError, match="dim"):
        index.add(paint(tmp_path / "green.png", "green"), FakeModel(dim=4), progress=False)
    assert len(index) == 1


def test_the_index_command_takes_folders_and_files(tmp_path, capsys, monkeypatch):
    import json

    import polymodal
    from polymodal import cli

    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: FakeModel())
    album = paint(tmp_path / "album" / "red.png", "red").parent
    green = paint(tmp_path / "loose" / "green.png", "green")
    blue = paint(tmp_path / "elsewhere" / "blue.png", "blue")
    db = tmp_path / "db"
    assert cli.main(["index", str(album), str(green), str(blue), "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["added"], out["removed"], out["index"]["count"]) == (3, 0, 3)
    green.unlink()
    paint(tmp_path / "album" / "more.png", "blue")
    assert cli.main(["index", str(album), "--db", str(db)]) == 0  # a folder sync leaves the loose files' rows alone
    text = capsys.readouterr().out
    assert f"indexed {album} into {db}: added 1, updated 0, removed 0" in text and "4 images" in text


@pytest.mark.parametrize("make, match", [
    (lambda tmp: tmp / "absent.png", "absent.png: not found"),
    (lambda tmp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt", "notes.txt: not an image file"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no images found under"),
])
def test_the_index_command_checks_every_path_before_loading_the_model(tmp_path, capsys, monkeypatch, make, match):
    import polymodal
    from polymodal import cli

    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: pytest.fail("the model loaded before the paths were checked"))
    good = paint(tmp_path / "ok" / "red.png", "red")
    assert cli.main(["index", str(good), str(make(tmp_path)), "--db", str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "db").exists()


def test_tiff_photos_in_a_folder_are_indexed_found_and_thumbnailed(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    paint(tmp_path / "photos" / "a.jpg", "red")
    paint(tmp_path / "photos" / "scan.tif", "blue")  # scanners and raw converters write TIFF
    paint(tmp_path / "photos" / "b.TIFF", "green")
    model, db = FakeModel(), tmp_path / "db"
    report = ImageIndex(db).update(tmp_path / "photos", model, progress=False)
    assert report.added == 3 and report.skipped == []
    hit = ImageIndex(db).search_text(model, "blue", k=1)[0]
    assert Path(hit.path).name == "scan.tif"
    with TestClient(create_app(model, db)) as client:
        thumb = client.get(f"/v1/thumb/{hit.id}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
