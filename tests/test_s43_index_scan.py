"""`polymodal index FOLDER` lists the folder once: the early check's listing is the one the sync uses."""

import logging
import shutil

from polymodal.cli import main


def test_index_lists_each_folder_once(gallery, lite, tmp_path, caplog, monkeypatch):
    import polymodal.index.scan as scan
    import polymodal.index.store as store

    folder = tmp_path / "photos"
    shutil.copytree(gallery, folder)
    walks = []
    real_walk = scan.os.walk
    monkeypatch.setattr(scan.os, "walk", lambda root, **kw: walks.append(str(root)) or real_walk(root, **kw))
    with caplog.at_level(logging.INFO, logger="polymodal.index.scan"):
        assert main(["index", str(folder), "--db", str(tmp_path / "db"), "--json"]) == 0
    assert walks == [str(folder)]
    assert sum("found" in r.getMessage() for r in caplog.records) == 1
    assert store.scan_images is scan.scan_images  # (the module the sync scans with is the one patched)
    # an update from Python, without a listing, still scans by itself: a new photo is added
    from PIL import Image

    from polymodal.index import ImageIndex

    Image.new("RGB", (48, 48), (10, 200, 30)).save(folder / "green.png")
    report = ImageIndex(tmp_path / "db").update(folder, lite, progress=False)
    assert len(walks) == 2 and report.added == 1


def test_a_file_given_as_db_is_called_a_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["info", "--db", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err
    assert "it is a file; an index is a folder" in err and f"--db {tmp_path / 'notes.txt'}`" not in err
