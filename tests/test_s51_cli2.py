"""Stop 51, the CLI in scripts and pipelines: no abbreviated flags, --precision on the VQA and caption commands,
--quiet on the long evaluations, and one error line where a misleading warning came first."""

import argparse
import json
import sys

import pytest
from PIL import Image
from test_cli_encoders_audit import COLOURS, one_line_error, photos, run, spy_load  # noqa: F401 (fixtures)

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError


def _parsers(parser=None, path=()):
    """(command words, parser) of polymodal and every (sub)command."""
    parser = parser or cli.build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


# -- 1. no abbreviations ------------------------------------------------------------------------------------------------


def test_no_parser_takes_abbreviated_flags():
    # argparse's add_subparsers passes no allow_abbrev down: each subcommand would have taken abbreviations
    loose = [" ".join(path) or "polymodal" for path, parser in _parsers() if parser.allow_abbrev]
    assert loose == []


@pytest.mark.parametrize("argv, flag", [
    (["search", "--db", "DB", "--tex", "q.txt"], "--tex"),  # was --texts; `--t` became ambiguous beside --top-k
    (["eval", "zeroshot", "--labels", "l.jsonl"], "--labels"),  # was --labels-file, silently
    (["classify", "a.jpg", "--labels-f", "l.txt"], "--labels-f"),  # was --labels-from
    (["index", "pics", "--d", "DB"], "--d"),  # was --db
    (["--verb", "info"], "--verb"),  # was --verbose
])
def test_an_abbreviated_flag_is_one_error_line_naming_it(argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"unrecognized arguments: {flag}" in err, err


def test_a_missing_required_flag_also_names_the_flag_that_was_not_taken(capsys):
    # `index pics --d DB` said only that --db is required, not that --d is no flag
    with pytest.raises(SystemExit):
        cli.main(["index", "pics", "--d", "DB"])
    err = capsys.readouterr().err
    assert "the following arguments are required: --db; unrecognized arguments: --d " in err


def test_whole_flags_with_equals_and_short_flags_with_their_value_still_parse():
    args = cli.build_parser().parse_args(["search", "--db=DB", "a dog", "-k3", "--top-k=4", "--texts=t.txt"])
    assert (args.db, args.k, args.texts) == ("DB", 4, "t.txt")
    args = cli.build_parser().parse_args(["train", "contrastive", "--pairs", "p.jsonl", "--lr", "-0.5"])
    assert args.lr == -0.5  # a negative value is no flag


def test_the_demo_takes_no_abbreviations_either(capsys, tmp_path, monkeypatch):
    from polymodal import demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "run", lambda *a: pytest.fail("the demo ran"))
    with pytest.raises(SystemExit) as stop:
        demo.main(["--o", "somewhere"])  # was --out
    assert stop.value.code == 2 and "--o" in capsys.readouterr().err


# -- 2. --precision on vqa, caption, eval vqa, eval captions --------------------------------------------------------------


@pytest.fixture()
def load_stops(monkeypatch):
    """polymodal.load recording its precision, then stopping the command with one error."""
    calls = []

    def load(name="lite", runtime="auto", precision="fp32", **kw):
        calls.append(precision)
        raise PolymodalError("stopped by the test once the model loads")

    monkeypatch.setattr(polymodal, "load", load)
    return calls


def _data(tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (12, 10), (255, 0, 0)).save(image)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"image": "red.png", "question": "is it red?", "answer": "yes"}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "red.png", "caption": "a red square"}) + "\n")
    return image, qa, pairs


@pytest.mark.parametrize("command", ["vqa", "vqa --qa", "caption", "eval vqa", "eval captions"])
def test_precision_reaches_the_model_in_the_vqa_and_caption_commands(command, load_stops, tmp_path, capsys):
    # these loaded their model without --precision, though easy-vqa's and the captioner's lite image tower run bf16
    image, qa, pairs = _data(tmp_path)
    argv = {"vqa": ["vqa", image, "is it red?"], "vqa --qa": ["vqa", "--qa", qa], "caption": ["caption", image],
            "eval vqa": ["eval", "vqa", "--qa", qa], "eval captions": ["eval", "captions", "--pairs", pairs]}[command]
    for given, expected in ((["--precision", "bf16"], "bf16"), ([], "fp32")):
        assert "stopped by the test" in one_line_error(capsys, *argv, *given)
        assert load_stops[-1] == expected


def test_eval_vqa_names_the_precision_it_ran_with(spy_load, capsys, monkeypatch):  # noqa: F811
    # as eval retrieval's, zeroshot's and images' lines do (an ONNX export's line names its variants instead)
    from types import SimpleNamespace

    import polymodal.eval.vqa as ev

    monkeypatch.setattr(ev, "read_qa", lambda path: [SimpleNamespace(image="a.png")])
    monkeypatch.setattr(ev, "vqa_accuracy", lambda model, rows, **kw: {"accuracy": 1.0})
    code, out, _ = run(capsys, "eval", "vqa", "--qa", "q.jsonl", "--model", "fake-vqa", "--precision", "bf16")
    assert code == 0 and json.loads(out)["precision"] == "bf16" and spy_load.calls[-1]["precision"] == "bf16"


# -- 3. one error line, not a warning before it ----------------------------------------------------------------------------


def test_eval_zeroshot_refuses_a_model_that_cannot_embed_before_any_warning(spy_load, photos, capsys,  # noqa: F811
                                                                             monkeypatch):
    import polymodal.eval.caveats as caveats

    # `eval zeroshot --model captioner` warned that its figures were optimistic (photos it was trained on), then
    # refused the model: the caveats now come after the check, as in eval retrieval and images
    def caveat(*args, **kwargs):
        print("WARNING a caveat about the figures", file=sys.stderr)  # (as logging writes it outside pytest)
        return {}

    monkeypatch.setattr(caveats, "data_caveats", caveat)
    labels = photos / "labels.jsonl"
    labels.write_text("".join(json.dumps({"image": f"{c}.png", "label": c}) + "\n" for c in COLOURS))
    err = one_line_error(capsys, "eval", "zeroshot", "--labels-file", labels, "--model", "fake-vqa")
    assert "cannot embed images" in err


# -- 4. --quiet on the long evaluations and vqa --qa ------------------------------------------------------------------------


def test_every_eval_and_vqa_take_quiet():
    quiet = {path for path, parser in _parsers() if "--quiet" in parser._option_string_actions}
    evals = {path for path, _ in _parsers() if len(path) == 2 and path[0] == "eval"}
    assert len(evals) == 5 and evals <= quiet and ("vqa",) in quiet


def test_eval_images_quiet_draws_no_bar(spy_load, photos, capsys):  # noqa: F811
    labels = photos / "labels.jsonl"
    labels.write_text("".join(json.dumps({"image": f"{c}.png", "label": label}) + "\n"
                              for c, label in zip(COLOURS, ("warm", "cool", "cool"))))
    argv = ["eval", "images", "--labels-file", labels, "--model", "fake"]
    code, out, err = run(capsys, *argv)
    assert code == 0 and "embedding" in err  # the bar, on stderr
    code, out, err = run(capsys, *argv, "--quiet")
    assert code == 0 and "embedding" not in err and "%|" not in err and json.loads(out)["images"] == 3


@pytest.mark.parametrize("command", ["eval vqa", "vqa --qa"])
def test_quiet_reaches_the_vqa_bars(command, spy_load, tmp_path, capsys, monkeypatch):  # noqa: F811
    import polymodal.eval.vqa as ev

    seen = []

    def answered(model, rows, progress=False, **kw):
        seen.append(progress)
        raise PolymodalError("stopped by the test")

    monkeypatch.setattr(ev, "vqa_accuracy" if command == "eval vqa" else "answer_rows", answered)
    _, qa, _ = _data(tmp_path)
    argv = ["eval", "vqa"] if command == "eval vqa" else ["vqa"]
    one_line_error(capsys, *argv, "--qa", qa, "--model", "fake-vqa")
    one_line_error(capsys, *argv, "--qa", qa, "--model", "fake-vqa", "--quiet")
    assert seen == [True, False]
