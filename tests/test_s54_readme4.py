"""Stop 54, the README's new paragraphs run as a new user would (helper readme4): `eval zeroshot --classes` with a
CSV of two columns said "only the class column names classs"; `eval ... --help` said --strict fails on skipped rows
and unreadable images only, while it also refuses photos embedded (questions answered) as NaN or inf."""

from __future__ import annotations

import pytest

from polymodal import cli
from polymodal.data.csv_rows import csv_names
from polymodal.errors import PolymodalError


@pytest.mark.parametrize("text", ["class,prompt\ncat,a photo of a cat\n", "prompt,other\ncat,x\n", "\n"])
def test_a_classes_csv_is_refused_in_plain_english(tmp_path, text):
    path = tmp_path / "classes.csv"
    path.write_text(text)
    with pytest.raises(PolymodalError) as caught:
        csv_names(path, "class")
    assert "classes" in str(caught.value) and "classs" not in str(caught.value)


def _strict_help(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        cli.main(["eval", command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--strict fail")
    return text[start:text.index(" --", start + 9)]  # up to the next option


def test_strict_help_names_what_the_model_scores_as_nan(capsys):
    for command in ("retrieval", "zeroshot", "images", "vqa"):
        assert "NaN or inf" in _strict_help(capsys, command), command
    assert "NaN" not in _strict_help(capsys, "captions")  # corpus scores: nothing there is left out as NaN
