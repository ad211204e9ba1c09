"""Behaviours every command shares: Ctrl-C / SIGTERM, a closed pipe, file names stdout cannot encode, the demo's too."""

import io
import os
import shutil
import sys

import pytest

from polymodal import cli, demo


def exit_code(main, argv: list) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:  # (left to escape, it would stop pytest itself)
        pytest.fail("the interrupt escaped: the user sees a traceback")


@pytest.mark.parametrize("error, code, word", [(KeyboardInterrupt(), 130, "interrupted"),
                                               (cli.Terminated(), 143, "terminated")])
def test_the_demo_stopped_by_ctrl_c_or_sigterm_says_one_line(error, code, word, tmp_path, capsys, monkeypatch):
    def stopped(out, model):
        raise error

    monkeypatch.setattr(demo, "run", stopped)
    assert exit_code(demo.main, ["--out", str(tmp_path / "demo")]) == code  # not a KeyboardInterrupt traceback
    err = capsys.readouterr().err
    assert err.startswith(f"polymodal: {word}") and len(err.splitlines()) == 1


def test_the_demo_piped_into_head_stops_quietly(tmp_path, capsys, monkeypatch):
    def reader_left(out, model):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(demo, "run", reader_left)
    assert demo.main(["--out", str(tmp_path / "demo")]) == 141
    assert capsys.readouterr().err == ""  # was "error: Broken pipe (pass --out a folder that can be written)", exit 2


def test_ctrl_c_while_the_parser_loads_is_one_line(capsys, monkeypatch):
    def interrupted():  # the first ~0.2 s of every command: imports of Pillow, numpy, the subcommands' parsers
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert exit_code(cli.main, ["info"]) == 130
    assert capsys.readouterr().err == "polymodal: interrupted\n"


def test_a_file_name_that_is_not_utf8_is_printed_under_a_strict_locale(lite, gallery, tmp_path, monkeypatch):
    """en_US.UTF-8 gives stdout strict errors: a Latin-1 file name stopped `classify *.jpg` with a traceback."""
    import polymodal

    monkeypatch.setattr(polymodal, "load", lambda name, **kw: lite)  # the session's lite, loaded once
    name = os.fsdecode(b"caf\xe9.jpg")  # its byte 0xe9 comes in as the surrogate \udce9
    shutil.copy(gallery / "cat.jpg", tmp_path / name)
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True))
    assert cli.main(["classify", str(tmp_path / name), "--labels", "cat,dog"]) == 0
    out = raw.getvalue()
    assert os.fsencode(str(tmp_path / name)) + b"\n" in out  # the name's own bytes, as `ls` writes them
    assert b"cat " in out and b"dog " in out  # the whole table, not cut off at the name
