"""Stop 50, a review of the stop's later changes (6c59aed..16cb037)."""

from polymodal.cli import build_parser


def test_train_vqa_split_help_names_the_formats_it_reads(capsys, tmp_path):
    """The shared train --split help came to say "JSON field or CSV column"; `train vqa` reads its questions from
    JSONL or Parquet only, and a CSV given with --split was then told "its rows carry no split field"."""
    import pytest

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "vqa", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.rindex("--split SPLIT")
    split_help = text[start:text.index("--val-split", start)]
    assert "Parquet column" in split_help and "CSV" not in split_help, split_help
