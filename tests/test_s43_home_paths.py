"""`--out=~/x` (no shell expands a ~ after "=") means the home folder, not a folder named "~"."""

import argparse
import json

from polymodal.cli import PATH_OPTIONS, build_parser, expand_home, main


def test_path_options_are_the_parsers_path_options():
    """Every option named in PATH_OPTIONS exists, and text options (queries, labels) are not in it."""
    dests = set()

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            else:
                dests.add(action.dest)

    walk(build_parser())
    assert set(PATH_OPTIONS) <= dests
    assert not {"query", "question", "labels", "choices", "template", "api_key"} & set(PATH_OPTIONS)


def test_tilde_paths_expand(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(out="~/run", pairs=["~/a.jsonl", "b.jsonl"], query="~cat", model="lite")
    expand_home(args)
    assert args.out == str(tmp_path / "run") and args.pairs == [str(tmp_path / "a.jsonl"), "b.jsonl"]
    assert args.query == "~cat" and args.model == "lite"


def test_plot_writes_under_home_not_a_folder_named_tilde(monkeypatch, tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    (home / "run").mkdir(parents=True)
    cwd.mkdir()
    (home / "run" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "epoch": 0, "split": "train", "loss": 1.0 / s, "lr": 0.1}) + "\n"
                for s in (1, 2, 3)))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert main(["plot", str(home / "run"), "--out=~/curves.png"]) == 0
    assert (home / "curves.png").is_file() and not (cwd / "~").exists()

