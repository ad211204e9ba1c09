"""The command line end to end on real photos and the real `lite` model."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from polymodal import cli, registry


@pytest.fixture()
def run(lite, monkeypatch, capsys):
    """Run `polymodal ...` in-process with the session's loaded `lite` (loading it per call would cost seconds)."""
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)

    def _run(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture()
def photos(gallery, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(gallery, folder)
    return folder


def test_index_search_classify_info(run, photos, tmp_path):
    db = tmp_path / "db"
    code, out, _ = run("index", photos, "--db", db, "--json")
    report = json.loads(out)
    assert code == 0 and report["added"] == len(list(photos.glob("*.jpg"))) and report["index"]["model_name"] == "lite"

    code, out, _ = run("index", photos, "--db", db, "--json")  # nothing new: nothing embedded
    again = json.loads(out)
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, report["added"])

    code, out, _ = run("search", "--db", db, "a cup of coffee", "-k", "3", "--json")
    hits = json.loads(out)
    assert code == 0 and len(hits) == 3 and Path(hits[0]["path"]).name == "coffee.jpg"

    code, out, _ = run("search", "--db", db, "--image", photos / "rocket.jpg", "-k", "2")
    assert code == 0 and out.splitlines()[2].split()[-1].endswith("rocket.jpg")  # table: header, rule, rank 1

    code, out, _ = run("classify", photos / "cat.jpg", photos / "temple.jpg", "--labels", "cat,temple,car", "--json")
    result = json.loads(out)
    assert [r["labels"][0]["label"] for r in result] == ["cat", "temple"]

    code, out, _ = run("info", "--db", db, "--json")
    info = json.loads(out)
    assert code == 0 and info["index"]["count"] == report["added"] and "lite" in info["models"]


def test_corrupt_file_is_reported_and_skipped(run, photos, tmp_path):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    code, out, _ = run("index", photos, "--db", tmp_path / "db")
    assert code == 0 and "skipped 1" in out and "broken.jpg" in out
    code, out, _ = run("info", "--db", tmp_path / "db", "--json")
    assert json.loads(out)["index"]["count"] == len(list(photos.glob("*.jpg"))) - 1


def test_a_folder_of_only_unreadable_files_is_an_error_and_makes_no_index(run, tmp_path):
    """A first run that could read nothing left an empty index tied to its model: a second try with another
    --model was refused ("built with model lite ... use a new --db")."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.jpg").write_text("not a photo")
    (folder / "b.png").write_text("nor this")
    for _ in range(2):
        code, out, err = run("index", folder, "--db", tmp_path / "db")
        assert code == 2 and out.count("  skipped ") == 2 and "a.jpg" in out
        assert err.strip().splitlines()[-1] == ("polymodal: error: none of the 2 image files could be read (the "
                                                "skipped list says why); pass photos (JPEG, PNG, WebP, ...); no index "
                                                "was made")
        assert not (tmp_path / "db").exists()
    code, out, _ = run("index", folder, "--db", tmp_path / "db", "--json")
    assert code == 2 and len(json.loads(out)["skipped"]) == 2 and json.loads(out)["index"] is None
    code, out, err = run("search", "--db", tmp_path / "db", "a cat")
    assert code == 2 and "no index at" in err


def test_an_index_that_already_holds_images_is_kept_when_a_new_folder_is_unreadable(run, photos, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.jpg").write_text("not a photo")
    assert run("index", photos, "--db", tmp_path / "db")[0] == 0
    code, out, _ = run("index", folder, "--db", tmp_path / "db")
    assert code == 2 and "skipped 1" in out
    code, out, _ = run("info", "--db", tmp_path / "db", "--json")
    assert json.loads(out)["index"]["count"] == len(list(photos.glob("*.jpg")))


def test_search_with_another_model_is_refused(run, photos, tmp_path, monkeypatch):
    db = tmp_path / "db"
    assert run("index", photos, "--db", db)[0] == 0

    class Other:
        name, version, dim, key = "other", "1", 384, "other@1"

    monkeypatch.setitem(registry.MODELS, "other", lambda **kw: Other())
    code, out, err = run("search", "--db", db, "a cat", "--model", "other")
    assert code == 2 and "lite" in err and "other" in err and len(err.strip().splitlines()) == 1


def test_bad_k_and_missing_query(run, tmp_path):
    assert run("search", "--db", tmp_path, "a cat", "-k", "0")[0] == 2
    code, _, err = run("search", "--db", tmp_path)
    assert code == 2 and "text query or --image" in err


def test_second_writer_gets_one_line_and_exit_2(gallery, tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    with FileLock(str(db / "index.lock")):
        proc = subprocess.run([sys.executable, "-m", "polymodal", "index", str(gallery), "--db", str(db)],
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "being written by another process" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["search", "red", "--db", "x", "-k", "abc"], ["train", "contrastive", "--lr", "abc"],
                                  ["export", "onnx"]])
def test_argparse_mistakes_are_one_line_too(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "usage:" not in err and "--help" in err
