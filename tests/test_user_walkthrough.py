"""What a fresh user tripped over while following the README (helper walkthrough, stop 14): each mistake is one
clear line before any slow model load, -v works after the subcommand, a closed pipe is not a disk error."""

import io
import json
import logging
import os

import numpy as np
import pytest

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError


def _no_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the mistake was reported")


def _error(capsys, argv) -> str:
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("polymodal: error:"), err
    return err


@pytest.mark.parametrize("argv", [["info", "-v"], ["-v", "info"], ["info", "--verbose"],
                                  ["train", "contrastive", "--pairs", "p", "--out", "o", "-v"]])
def test_verbose_is_taken_before_and_after_the_subcommand(argv):
    assert cli.build_parser().parse_args(argv).verbose is True


def test_verbose_defaults_off_in_every_subcommand():
    assert cli.build_parser().parse_args(["info"]).verbose is False
    assert cli.build_parser().parse_args(["train", "contrastive", "--pairs", "p", "--out", "o"]).verbose is False


def test_a_closed_pipe_ends_quietly_with_141(tmp_path, monkeypatch, capsys):
    class ClosedPipe(io.StringIO):  # `polymodal info --json | head -c 10` once head has gone
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return os.open(tmp_path / "sink", os.O_WRONLY | os.O_CREAT)

    saved = os.dup(1)  # the handler points fd 1 at /dev/null: give pytest its stdout back afterwards
    try:
        monkeypatch.setattr("sys.stdout", ClosedPipe())
        code = cli.main(["info", "--json"])
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert code == 141
    assert capsys.readouterr().err == ""  # no "file-system error: check the free space"


def test_export_of_a_misspelt_model_says_unknown_model(capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    err = _error(capsys, ["export", "onnx", "lyte"])
    assert "unknown model 'lyte'" in err and "--out" not in err


@pytest.mark.parametrize("extra, message", [(["  "], "the question is empty"),
                                            (["is it red?", "--top-k", "0"], "--top-k must be at least 1, got 0")])
def test_vqa_mistakes_come_before_the_model_loads(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(polymodal, "load", _no_load)
    assert message in _error(capsys, ["vqa", tmp_path / "missing.png", *extra])


def test_choices_written_with_spaces_get_a_comma_hint(easy_vqa, gallery):
    image = str(next(gallery.glob("*.jpg")))
    with pytest.raises(PolymodalError, match="separate choices with commas") as err:
        easy_vqa.answer(image, "what shape is it?", choices=["yes no"])
    assert "'yes no'" in str(err.value)  # quoted: the user sees it was read as one choice
    with pytest.raises(PolymodalError) as err:
        easy_vqa.answer(image, "what shape is it?", choices=["dog"])
    assert "commas" not in str(err.value)


def test_yes_no_model_warns_on_an_open_question(coco_yesno, gallery, caplog):
    image = str(next(gallery.glob("*.jpg")))
    with caplog.at_level(logging.WARNING):
        coco_yesno.answer(image, "Is this a cat?")
        coco_yesno.answer(image, "Could this be a zoo?")
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        result = coco_yesno.answer(image, "what animal is this?")
    assert result["answer"] in ("yes", "no")
    assert "does not read like a yes/no question" in caplog.text


def test_pretrain_with_too_few_images_to_validate_says_so(gallery, tmp_path, capsys, monkeypatch):
    import polymodal.train.pretrain as pretrain

    monkeypatch.setattr(pretrain, "build_model", _no_load)
    pairs = tmp_path / "pairs.jsonl"
    images = sorted(gallery.glob("*.jpg"))[:11]  # 10% for validation rounds to one image
    pairs.write_text("".join(json.dumps({"image": str(p), "caption": f"a photo of {p.stem}"}) + "\n" for p in images))
    err = _error(capsys, ["train", "pretrain", "--pairs", pairs, "--objectives", "itm:1", "--out", tmp_path / "run"])
    assert f"the validation split (0.1 of {len(images)} images) has 1" in err and "--val-pairs" in err


def test_train_vqa_from_a_missing_folder_says_it_is_missing(gallery, tmp_path, capsys):
    qa = tmp_path / "qa.jsonl"
    images = sorted(gallery.glob("*.jpg"))[:2]
    qa.write_text("".join(json.dumps({"image": str(p), "question": "is it?", "answer": "yes"}) + "\n" for p in images))
    err = _error(capsys, ["train", "vqa", "--qa", qa, "--val-qa", qa, "--model", tmp_path / "runs" / "pt" / "model",
                          "--out", tmp_path / "out"])
    assert "no model folder" in err and "train pretrain" in err


def test_serve_info_says_what_runs_the_model(lite):
    from polymodal.serve.service import runs_on

    assert runs_on(lite) == {"runtime": "torch", "precision": "fp32"}

    class Exported:  # stands in for OnnxEmbeddingModel: the served graph variant per tower
        variants = {"image": "int8_static", "text": "fp32"}

    Exported.__module__ = "polymodal.export.runtime"
    assert runs_on(Exported()) == {"runtime": "onnx", "precision": "image=int8_static, text=fp32"}


def test_second_index_run_with_nothing_new_shows_no_empty_progress_bar(gallery, tmp_path, capsys, lite, monkeypatch):
    monkeypatch.setattr(polymodal, "load", lambda *a, **k: lite)
    args = ["index", gallery, "--db", tmp_path / "db"]
    assert cli.main([str(a) for a in args]) == 0
    assert "embedding" in capsys.readouterr().err  # the first run embeds and shows its bar
    assert cli.main([str(a) for a in args]) == 0
    assert "embedding" not in capsys.readouterr().err


def test_retrieval_metrics_refuse_an_image_without_captions():
    from polymodal.eval.retrieval import retrieval_metrics

    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(PolymodalError, match="1 of 3 images have no caption"):
        retrieval_metrics(emb, emb[:2], np.array([0, 1]))


def test_templates_with_other_braces_do_not_crash(lite, gallery):
    image = str(next(gallery.glob("*.jpg")))
    ranked = lite.classify([image], ["cat", "dog"], templates=["a {} or a {} {x}"])[0]
    assert sorted(label for label, _ in ranked) == ["cat", "dog"]


def test_paired_speed_stops_early_only_for_a_clearly_slower_variant(monkeypatch):
    from polymodal.export import onnx_export

    now = [0.0]  # a fake clock: each call of a graph advances it by that graph's seconds per call
    monkeypatch.setattr(onnx_export.time, "perf_counter", lambda: now[0])

    def graph(name: str, seconds: float, calls: list):
        def run():
            calls.append(name)
            now[0] += seconds
        return run

    for per_call, turns in ((0.05, 1), (0.011, 3), (0.008, 3)):  # 0.2x fp32: one turn; 0.9x and 1.25x: all three
        calls = []
        speed, base = onnx_export.paired_speed(graph("variant", per_call, calls), graph("base", 0.01, calls), 10,
                                               seconds=0.02)
        assert calls[:2] == ["variant", "base"]  # one warm-up call each, then the timed turns
        calls_per_turn = -(-0.02 // per_call)  # calls until a turn lasts `seconds`
        assert calls[2:].count("variant") == turns * calls_per_turn, (per_call, calls)
        assert abs(speed - 10 / per_call) < 1e-6 and abs(base - 1000) < 1e-6


def test_paired_speed_judges_a_variant_by_its_least_favourable_turn(monkeypatch):
    """One lucky turn (timing noise on a shared machine) must not make a slower variant look faster."""
    from polymodal.export import onnx_export

    now = [0.0]
    monkeypatch.setattr(onnx_export.time, "perf_counter", lambda: now[0])
    turn_of = {"variant": 0, "base": 0}
    # seconds per call in turns 0..3 (the first entry is the warm-up call): the variant is fast in turn 1 only
    costs = {"variant": [0.012, 0.008, 0.012, 0.012], "base": [0.01, 0.01, 0.01, 0.01]}

    def graph(name: str):
        def run():
            now[0] += costs[name][min(turn_of[name], 3)]
        return run

    def timed(fn, items, seconds, repeats, warm_up=True):
        name = "variant" if fn is variant else "base"
        turn_of[name] += 1
        start = now[0]
        fn()
        return items / (now[0] - start)

    variant, base = graph("variant"), graph("base")
    monkeypatch.setattr(onnx_export, "_items_per_second", timed)
    speed, base_speed = onnx_export.paired_speed(variant, base, 10, seconds=0.02)
    assert speed / base_speed < 1.0  # 0.83x in turns 2 and 3; best-of-turns each said 1.25x (turn 1)
    assert onnx_export.gate(speed, base_speed, 0.0, 1.0)[0] == "rejected"
