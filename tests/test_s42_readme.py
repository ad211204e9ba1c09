"""The README as a user reads it: what it documents about a command's flags, that command's --help says too."""

import re

import pytest

from polymodal.cli import build_parser


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width


def test_train_contrastive_help_names_the_values_the_readme_documents(capsys):
    """`train contrastive --help` said only "default: data" for --hard-negatives and "default: linear" for
    --image-head: the values (swap, none; attention with spatial features, ...) and --unfreeze-every's need for
    --image-trainable-blocks were in the README alone."""
    text = _help(["train", "contrastive"], capsys)
    flag_help = {}
    for flag in ("hard-negatives", "image-head", "image-features", "unfreeze-every", "zeroshot-labels"):
        start = text.index(f"--{flag} {flag.replace('-', '_').upper()}", text.index("options:"))  # not the usage
        nxt = re.compile(r" (?:--[a-z][a-z-]* [A-Z][A-Z_]+|-v,) ").search(text, start + 1)  # the next option
        flag_help[flag] = text[start: nxt.start() if nxt else None]
    assert all(word in flag_help["hard-negatives"] for word in ("swap", "none", "default: data"))
    assert all(word in flag_help["image-head"] for word in ("attention", "conse_residual", "default: linear"))
    assert "spatial" in flag_help["image-features"]
    assert "--image-trainable-blocks" in flag_help["unfreeze-every"]
    assert "zero-shot" in flag_help["zeroshot-labels"]


class _Export:
    """`lite` dressed as an ONNX export: what the eval commands read from one is its `variants`."""

    def __init__(self, model):
        self._model, self.variants = model, {"image": "fp32", "text": "int8_dynamic"}

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_eval_zeroshot_names_the_onnx_graphs_that_ran_as_retrieval_does(lite, gallery, tmp_path, monkeypatch):
    """`eval retrieval` (and `eval vqa`, `eval captions`) print which graph (fp32 or a gated int8 one) ran per tower
    of an export; `eval zeroshot --runtime onnx` left it out, so its figures could not be told apart by variant."""
    import json

    import polymodal.cli_train as cli_train
    from conftest import cli_json

    monkeypatch.setattr(cli_train, "load_model", lambda args, name: _Export(lite))
    rows = [{"image": str(gallery / f"{name}.jpg"), "label": name} for name in ("cat", "coffee", "rocket")]
    labels = tmp_path / "labelled.jsonl"
    labels.write_text("".join(json.dumps(row) + "\n" for row in rows))
    line = cli_json(["eval", "zeroshot", "--labels-file", labels, "--model", "lite"])
    assert line["variants"] == {"image": "fp32", "text": "int8_dynamic"}
    assert line["top1"] == 1.0
