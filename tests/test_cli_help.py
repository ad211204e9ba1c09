"""`polymodal train ... --help` shows each setting's default (the recipe's, which differs between tasks), and
building the parser imports no torch (the ONNX runtime paths never load it)."""

import re
import subprocess
import sys

import pytest

from polymodal.cli import build_parser


@pytest.mark.parametrize("task, shown", [
    ("contrastive", {"patience": "5", "batch-size": "256", "hard-negatives": "data", "zeroshot-labels": "unset"}),
    ("vqa", {"patience": "3", "weight-decay": "0.05"}),
    ("captioner", {"patience": "2", "lr": "0.0005"}),
    ("pretrain", {"patience": "3"}),
])
def test_train_help_shows_each_tasks_defaults(task, shown, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", task, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    for flag, default in shown.items():
        # the default may follow a description of the setting ("... (default: data)"), within the flag's own help
        assert re.search(rf"--{flag} {flag.replace('-', '_').upper()} (?:(?!--\w).)*?default: {re.escape(default)}\b",
                         text), flag


def test_building_the_parser_imports_no_torch():
    code = "import sys, polymodal.cli; polymodal.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def _options_without_help(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _options_without_help(child, (*path, name))
        elif not action.help and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(path), action.option_strings or action.dest


def test_every_option_and_argument_has_help():
    """`search --help` showed `-k K` with no word of what K is (and classify's --top-k/--model, index's --batch-size,
    every --json, vqa's IMAGE/QUESTION, serve's --port and a dozen more were bare)."""
    assert list(_options_without_help(build_parser())) == []
