"""Stop 50, the CLI as a script sees it: one flag name and meaning for one concept across commands, and the README's
promises about flags and JSON output match the parsers."""

import json
import re
import shlex

import pytest
from docs_text import docs_text
from test_cli_encoders_audit import photos, run, spy_load  # noqa: F401 (fixtures)

from polymodal.cli import build_parser

README = docs_text()  # README.md + docs/*.md: the claims and shell lines of every page


def _commands_with(flag: str, parser=None, path=()):
    """(command words) of every (sub)command whose parser takes ``flag``."""
    import argparse

    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if flag in child._option_string_actions:
                    yield (*path, name)
                yield from _commands_with(flag, child, (*path, name))


def test_precision_is_taken_by_every_command_that_embeds_photos_with_the_lite_tower():
    # search, index, eval retrieval and eval images took --precision bf16; classify and eval zeroshot (the same
    # image tower, the same polymodal.load) refused it as an unrecognized argument
    have = set(_commands_with("--precision"))
    assert {("classify",), ("eval", "zeroshot"), ("search",), ("index",), ("eval", "retrieval"),
            ("eval", "images")} <= have


def test_classify_and_eval_zeroshot_pass_precision_to_the_model(capsys, spy_load, photos, monkeypatch):  # noqa: F811
    import polymodal.eval.zeroshot as zs

    code, out, _ = run(capsys, "classify", photos / "red.png", "--labels", "red,blue", "--model", "fake",
                       "--precision", "bf16", "--json")
    assert code == 0 and spy_load.calls[-1]["precision"] == "bf16" and json.loads(out)[0]["labels"]
    monkeypatch.setattr(zs, "read_labelled_images", lambda path, **kw: (["a.png"], ["red"]))
    metrics = {"top1": 1.0, "images": 1, "photos": 1, "unreadable": 0, "classes": 2}
    monkeypatch.setattr(zs, "zeroshot_accuracy", lambda m, i, l, templates, **kw: metrics)
    for given, expected in ((["--precision", "bf16"], "bf16"), ([], "fp32")):
        code, out, _ = run(capsys, "eval", "zeroshot", "--labels-file", "x", "--model", "fake", *given)
        # the JSON line names the precision that ran, as eval retrieval's and eval images' do
        assert code == 0 and spy_load.calls[-1]["precision"] == expected and json.loads(out)["precision"] == expected


def test_search_takes_top_k_as_classify_and_vqa_do():
    # `classify --top-k 3` and `vqa --top-k 3`, but `search --top-k 3` was "unrecognized arguments"
    parse = build_parser().parse_args
    assert parse(["search", "--db", "DB", "a dog", "--top-k", "3"]).k == 3
    assert parse(["search", "--db", "DB", "a dog", "-k", "4"]).k == 4  # the old spelling, as the README writes it
    assert parse(["search", "--db", "DB", "a dog"]).k == 10
    assert set(_commands_with("--top-k")) >= {("search",), ("classify",), ("vqa",)}


def test_search_top_k_mistake_names_both_spellings(capsys):
    from polymodal.cli import main

    assert main(["search", "--db", "DB", "a dog", "--top-k", "0"]) == 2
    assert "-k/--top-k must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["contrastive", "pretrain", "captioner"])  # vqa reads no CSV: test_s50_diffreview2
def test_train_split_help_says_csv_rows_are_read_too(task, capsys):
    # stop 49 mended eval's --split help; train's still said "the JSON rows whose split field", while a CSV's split
    # column filters training rows the same way (train contrastive --pairs x.csv --split train reads 30 of 40 rows)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", task, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.rindex("--split SPLIT")
    split_help = text[start:text.index("--val-split", start)]
    assert "CSV column" in split_help and "JSON rows" not in split_help


def test_readme_names_every_command_that_takes_json():
    # "Add `--json` to `index`, `search`, ..." left out `caption`, whose --json writes one JSON line per photo
    start = README.index("Add `--json` to")
    sentence = README[start:README.index("Mistakes", start)]
    named = set(re.findall(r"`(\w+)(?: --json)?`", sentence))
    assert {cmd[0] for cmd in _commands_with("--json")} <= named


def test_readme_zeroshot_example_names_the_model_classify_uses():
    # "`eval zeroshot --template "a photo of a {}."` scores what `classify` ranks": but eval zeroshot's default
    # model is `default` and classify's `lite` (2 of 8 Flickr8k photos got another label)
    sentence = next(s for s in README.split(". ") if "scores what `classify` ranks" in s)
    argv = shlex.split(re.search(r"`(eval zeroshot [^`]*)`", sentence).group(1))
    zeroshot = build_parser().parse_args([*argv, "--labels-file", "x"])
    classify = build_parser().parse_args(["classify", "x.jpg"])
    assert zeroshot.model == classify.model and zeroshot.template == ["a photo of a {}."]


def _readme_command_lines() -> list[str]:
    """The `polymodal ...` lines of README.md's shell blocks (comments and chained commands split off)."""
    lines, inside, shell = [], False, False
    for line in README.splitlines():
        if line.startswith("```"):
            inside, shell = not inside, line[3:].strip() in ("", "bash", "sh", "shell")
            continue
        if inside and shell:
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", re.sub(r"\s+#.*$", "", line.strip())):
                if found := re.match(r"^(?:\S+=\S+\s+)*(?:\S*/)?polymodal\s+(.*)$", part):
                    lines.append(found.group(1))
    return lines


def test_readme_command_lines_parse():
    # a guard (held at stop 50): each of the README's 48 shell command lines is one the parser takes
    lines = _readme_command_lines()
    assert len(lines) > 40
    for line in lines:
        try:
            build_parser().parse_args(shlex.split(line))
        except SystemExit as exc:
            assert exc.code in (0, None), line
