"""Reproducible runs as a researcher reads about them: what --seed draws in each trainer."""

import pytest

from polymodal.cli import build_parser


def _seed_help(task, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", task, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    start = text.index("--seed SEED", text.index("options:"))  # not the usage line
    return text[start: text.index("--patience PATIENCE", start)]


@pytest.mark.parametrize("task, draws", [
    ("contrastive", ("--views", "--hard-negatives swap")),
    ("vqa", ("wrong answers of the ITM rows",)),
    ("pretrain", ("ITM", "MLM", "MRM")),
])
def test_seed_help_names_every_draw_of_the_trainer(task, draws, capsys):
    """--help said "initial weights, the data order, dropout and the validation split" for every trainer, while
    another --seed also redraws contrastive's augmented views and swapped captions, VQA's wrong ITM answers and
    pretraining's negatives and masks: a seed sweep varies those too."""
    text = _seed_help(task, capsys)
    assert all(draw in text for draw in draws), text
    assert "default: 0" in text

