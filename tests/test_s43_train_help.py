"""Every `train` flag says what it does in --help, not only "default: 10" (vqa and captioner said only that)."""

import argparse

import pytest

from polymodal.cli import build_parser


def _subparser(*names):
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("task", ["contrastive", "vqa", "captioner", "pretrain"])
def test_every_recipe_flag_explains_itself(task):
    parser = _subparser("train", task)
    bare = [a.option_strings[0] for a in parser._actions
            if a.help and a.help.startswith("default:")]
    assert bare == []
    help_text = parser.format_help()
    assert "default: %(" not in help_text  # every recipe default was filled in


def test_an_unknown_flag_without_a_command_is_named(capsys):
    from polymodal.cli import main

    with pytest.raises(SystemExit) as info:
        main(["-x"])
    assert info.value.code == 2
    assert "unrecognized arguments: -x" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-v"])  # a known flag: the command is what is missing
    assert "required: command" in capsys.readouterr().err
