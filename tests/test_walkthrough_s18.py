"""A new user's walk through Qdrant, --runtime onnx and search --texts: the rough edges found, kept fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymodal.apps.text_search import read_text_lines
from polymodal.cli import build_parser, main

from test_index import FakeModel
from test_qdrant import _photos

qdrant = pytest.importorskip("qdrant_client", reason="the qdrant extra: pip install -e '.[qdrant]'")


def test_text_lines_split_on_newlines_only(tmp_path):
    # U+2028, NEL and a form feed inside a caption are not line breaks to an editor, `wc -l` or `sed -n 2p`
    path = tmp_path / "captions.txt"
    path.write_bytes("a dog\u2028on a beach\r\ntwo cats\x85asleep\r\nthe end\x0cof the page\r\n".encode())
    texts, lines = read_text_lines(path)
    assert texts == ["a dog\u2028on a beach", "two cats\x85asleep", "the end\x0cof the page"]
    assert lines == [1, 2, 3]


@pytest.fixture
def pushed(tmp_path, monkeypatch):
    monkeypatch.setattr("polymodal.load", lambda name, **kw: FakeModel())
    pics = _photos(tmp_path / "pics", ["red", "blue", "green"])
    db, q = str(tmp_path / "db"), str(tmp_path / "q")
    assert main(["index", str(pics), "--db", db, "--qdrant", q, "--json"]) == 0
    return pics, db, q


@pytest.mark.parametrize("args", [
    ["index", "{pics}", "--db", "{db}", "--qdrant", ""],  # `--qdrant "$QDRANT_URL"` with the variable unset
    ["index", "--db", "{db}", "--qdrant", ""],
    ["info", "--qdrant", ""],
    ["search", "red", "--qdrant", ""],
])
def test_a_blank_qdrant_is_refused_not_ignored(pushed, args, capsys):
    pics, db, _ = pushed
    capsys.readouterr()
    assert main([a.format(pics=pics, db=db) for a in args]) == 2
    assert "--qdrant needs a server URL" in capsys.readouterr().err


def test_a_no_op_push_shows_no_progress_bar(pushed, capsys):
    _, db, q = pushed
    capsys.readouterr()
    assert main(["index", "--db", db, "--qdrant", q]) == 0
    out = capsys.readouterr()
    assert "0 added, 0 removed, 3 unchanged" in out.out and out.err == ""


def test_qdrant_info_names_a_local_folder_absolutely_like_the_index(pushed, capsys, monkeypatch):
    _, db, q = pushed
    monkeypatch.chdir(Path(q).parent)
    capsys.readouterr()
    assert main(["info", "--db", "db", "--qdrant", "q", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["index"]["db"] == db and shown["qdrant"]["qdrant"] == q


def test_explain_on_a_top_match_since_deleted_says_so(pushed, capsys, tmp_path):
    pics, db, q = pushed
    (pics / "red.png").unlink()  # still in the index and the collection until the next index + push
    for where in (["--db", db], ["--qdrant", q]):
        capsys.readouterr()
        assert main(["search", "red", *where, "-k", "1", "--explain", str(tmp_path / "why.png")]) == 2
        err = capsys.readouterr().err
        assert "red.png, which is no longer there" in err and "pass an existing image file" not in err


def test_texts_usage_errors_show_a_texts_example(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("a cat\n")
    for extra in ([], ["a cat", "--image", "x.jpg"]):
        assert main(["search", "--texts", str(texts), *extra]) == 2
        err = capsys.readouterr().err
        assert f"polymodal search --texts {texts}" in err and "--db DB" not in err


def test_runtime_help_matches_the_measured_speed_up():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("index", "search", "classify"):
        runtime = next(a for a in sub.choices[command]._actions if a.dest == "runtime")
        assert "3.6x" not in runtime.help and "~2x" in runtime.help and "same vectors" not in runtime.help


def test_an_empty_db_is_refused_not_the_current_folder(tmp_path, monkeypatch, capsys):
    from polymodal import cli

    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "photos" / "red.png")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["index", "photos", "--db", ""]) == 2  # `--db "$UNSET"`
    assert "--db is empty" in capsys.readouterr().err and [p.name for p in tmp_path.iterdir()] == ["photos"]
