"""Stop 49, README walkthrough: what the README says of a flag or a refusal, its --help and its messages say too."""

import logging

import pytest

from polymodal.cli import build_parser
from polymodal.errors import PolymodalError


@pytest.mark.parametrize("task", ["retrieval", "zeroshot", "vqa", "captions"])
def test_eval_split_help_says_several_names_are_read(task, capsys):
    # the README (and the missing-split error) say `--split` takes several names joined by commas, and CSV rows
    # of a `split` column too; the help said "the JSON rows whose split field is NAME"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", task, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    start = text.rindex("--split NAME")  # its help, after the usage line
    split_help = text[start:text.index("--strict", start)]
    assert "comma-separated" in split_help and "CSV" in split_help


def test_a_blank_api_key_is_refused_without_a_warning_that_it_is_used(tmp_path, caplog):
    # "   " was first warned of as "used without [the whitespace]", then refused as blank: two lines that disagree
    from polymodal.serve.app import create_app

    with caplog.at_level(logging.WARNING), pytest.raises(PolymodalError, match="is blank"):
        create_app(None, tmp_path / "pics.idx", api_key="  \n")
    assert "used without it" not in caplog.text
