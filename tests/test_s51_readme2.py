"""The README and --help as a new user reads them at stop 51: what a command's help says of its output is what the
command does (helper readme2)."""

import pytest

from polymodal.cli import build_parser


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width


def _page_help(text: str) -> str:
    start = text.index("--page FILE.html ", text.index("options:"))  # the option's help, not the usage line
    return text[start: text.index(" --split NAME ", start)]


def test_eval_captions_page_help_says_its_own_order(capsys):
    """`eval captions --help` said its --page puts "the model's failures first", as every eval's does; a caption is
    not right or wrong: the page puts the lowest per-photo CIDEr-D first (as it says)."""
    captions = _page_help(_help(["eval", "captions"], capsys))
    assert "lowest CIDEr-D first" in captions and "failures first" not in captions
    for task in ("retrieval", "zeroshot", "vqa", "images"):  # the others do put failures first
        assert "failures first" in _page_help(_help(["eval", task], capsys)), task


def test_top_level_help_names_what_search_and_serve_also_do(capsys):
    """`polymodal --help` called search "search an index by text or by image" (nothing of --texts' text files or of
    Qdrant) and serve "embed, search, classify, web page" (nothing of /v1/vqa and /v1/caption)."""
    text = _help([], capsys)
    commands = text.index("positional arguments")

    def summary(name: str, following: str) -> str:
        start = text.index(f" {name} ", text.index("}", commands))  # after the list of choices
        return text[start: text.index(f" {following} ", start)]

    search, serve = summary("search", "classify"), summary("serve", "export")
    assert "--texts" in search and "Qdrant" in search
    assert "--vqa-model" in serve and "--caption-model" in serve and "Qdrant" in serve
