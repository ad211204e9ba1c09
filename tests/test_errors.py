"""User mistakes give one clear line and a non-zero exit code, never a traceback."""

import subprocess
import sys

import numpy as np
import pytest

import polymodal
from polymodal.data.images import load_image


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "polymodal", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_unknown_model_name():
    with pytest.raises(polymodal.PolymodalError, match="unknown model 'nope'.*lite"):
        polymodal.load("nope")
    assert_one_line_error(run_cli("classify", "x.jpg", "--labels", "a,b", "--model", "nope"), "unknown model")


def test_missing_folder_for_index(tmp_path):
    assert_one_line_error(run_cli("index", str(tmp_path / "absent"), "--db", str(tmp_path / "db")), "absent")


def test_empty_folder_for_index(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("index", str(tmp_path / "empty"), "--db", str(tmp_path / "db")), "no images")


def test_missing_index_for_search(tmp_path):
    assert_one_line_error(run_cli("search", "--db", str(tmp_path / "nodb"), "a dog"), "polymodal index")


def test_bad_images(tmp_path):
    (tmp_path / "fake.jpg").write_text("not an image")
    with pytest.raises(polymodal.PolymodalError, match="not a readable image"):
        load_image(tmp_path / "fake.jpg")
    with pytest.raises(polymodal.PolymodalError, match="image not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(polymodal.PolymodalError, match="shape"):
        load_image(np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(polymodal.PolymodalError, match="cannot read an image from int"):
        load_image(3)


def test_bad_labels_and_templates(lite, gallery):
    with pytest.raises(polymodal.PolymodalError, match="no labels"):
        lite.classify([gallery / "cat.jpg"], [])
    with pytest.raises(polymodal.PolymodalError, match="template"):
        lite.classify([gallery / "cat.jpg"], ["cat"], templates=["a photo"])


@pytest.mark.parametrize("command, needle", [("contrastive", "--pairs"), ("pretrain", "--pairs"), ("vqa", "--qa")])
def test_train_without_data_names_the_missing_flag(tmp_path, command, needle):
    assert_one_line_error(run_cli("train", command, "--out", str(tmp_path / "run")), needle, "--out RUN_DIR")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, needle", [
    (["eval", "vqa", "--qa", "{folder}"], "is a folder, not a QA file; pass"),
    (["train", "vqa", "--qa", "{folder}", "--out", "{folder}/run"], "is a folder, not a QA file; pass"),
    # a folder of class folders is a labelled set (stop 49): a photo folder is one without them
    (["eval", "zeroshot", "--labels-file", "{folder}"], "holds no class folders of photos; pass"),
])
def test_a_photo_folder_where_its_rows_file_goes_is_called_a_folder(gallery, capsys, argv, needle):
    # not "not found": the folder exists, and saying so sends the user looking for the wrong mistake
    from polymodal import cli

    assert cli.main([a.format(folder=gallery) for a in argv]) == 2
    assert needle in capsys.readouterr().err
    assert not (gallery / "run").exists()


@pytest.mark.parametrize("argv, command", [
    (["classify", "x.jpg", "--labels", "a,b", "--explain", "c.png"], "polymodal classify"),
    (["train", "vqa", "--qa", "q.jsonl", "--bogus", "1"], "polymodal train vqa"),
    (["info", "extra"], "polymodal info"),
])
def test_an_unknown_flag_points_at_its_commands_help(argv, command, capsys):
    from polymodal.cli import build_parser, main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("polymodal: error: unrecognized arguments: ")
    assert err.endswith(f"(see {command} --help)") and len(err.splitlines()) == 1
    assert "_command_prog" not in vars(build_parser().parse_args(["info"]))  # parsing leaves no extra setting
