"""Stop 55 leftovers (helper leftovers): the ONNX VQA runtime raises one NotFiniteAnswer for rows all scored NaN, as
the PyTorch model does (it gave each the vocabulary's first answer with a NaN score), and has a repr; `index` takes
--quiet as `train` does; benchmarks/peak_memory.py --photos 0 runs the commands that need no photo (IndexError) and
refuses it, in one line, for those that do."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from polymodal.errors import PolymodalError

ANSWERS = ["yes", "no", "red"]


@pytest.fixture()
def onnx_vqa():
    """An OnnxFusionEncoder without graphs (an export takes ~10 s): its batches' logits are made here, NaN for each
    row whose question starts with "broken"."""
    pytest.importorskip("onnxruntime")
    from polymodal.data.answers import choice_index
    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    model = OnnxFusionEncoder.__new__(OnnxFusionEncoder)
    model.name, model.version, model.answers, model.match = "tiny-vqa", "1", ANSWERS, None
    model.answer_index = choice_index(ANSWERS)
    model.files = {"grid": "grid.int8_static.onnx", "question": "question.onnx", "head": "head.onnx"}

    def batches(images, questions, batch_size, options=None):
        logits = np.tile(np.array([[2.0, 0.0, 1.0]], np.float32), (len(questions), 1))
        logits[[q.startswith("broken") for q in questions]] = np.nan
        yield np.zeros((len(questions), 4, 8), np.float32), logits

    model._batches = batches
    return model


def test_onnx_vqa_rows_all_scored_nan_are_one_error(onnx_vqa):
    with pytest.raises(PolymodalError, match="model 'tiny-vqa' scores the answers to all 2 questions as NaN"):
        onnx_vqa.predict(["a.png", "b.png"], ["broken?", "broken too?"])
    with pytest.raises(PolymodalError, match="all 2 questions as NaN"):
        onnx_vqa.predict_choices(["a.png", "b.png"], ["broken?", "broken too?"], [["red", "no"]] * 2)
    # one row so among finite ones (a photo that overflows the model) keeps its NaN score, as in PyTorch
    rows = onnx_vqa.predict(["a.png", "b.png"], ["is it red?", "broken?"])
    assert rows[0] == ("yes", pytest.approx(0.665, abs=1e-3)) and np.isnan(rows[1][1])
    assert onnx_vqa.predict([], []) == []


def test_eval_vqa_of_an_onnx_model_still_counts_its_nan_rows(onnx_vqa, tmp_path, caplog):
    from polymodal.eval.vqa import QARow, vqa_accuracy

    rows = [QARow(image="a.png", question="is it?", answer="yes"),
            QARow(image="b.png", question="broken?", answer="yes"),
            QARow(image="a.png", question="which?", answer="red", choices=("red", "no"))]
    with caplog.at_level(logging.WARNING):
        got = vqa_accuracy(onnx_vqa, rows, cache=False)
    assert got["not_finite"] == 1 and got["count"] == 2 and got["accuracy"] == 1.0, got
    assert "left out 1 question" in caplog.text
    with pytest.raises(PolymodalError, match="all 3 questions as NaN"):
        vqa_accuracy(onnx_vqa, [QARow(image=r.image, question="broken " + r.question, answer=r.answer,
                                      choices=r.choices) for r in rows], cache=False)


def test_the_onnx_vqa_runtime_has_a_repr(onnx_vqa):
    assert repr(onnx_vqa) == "OnnxFusionEncoder(tiny-vqa@1, grid=int8_static, question=fp32)"


def test_index_takes_quiet_as_train_does(lite, gallery, tmp_path, capsys, monkeypatch):
    from polymodal import cli

    monkeypatch.setattr(cli, "load_model", lambda *args, **kwargs: lite)  # the session's: no second load
    photos = [str(gallery / "cat.jpg"), str(gallery / "rocket.jpg")]
    assert cli.main(["index", *photos, "--db", str(tmp_path / "db"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("indexed ") and "embedding" not in err, err  # the report still, no progress bar
    assert cli.main(["index", *photos, "--db", str(tmp_path / "db2")]) == 0
    assert "embedding" in capsys.readouterr().err  # the bar --quiet turns off


@pytest.fixture()
def peak_memory(tmp_path, monkeypatch):
    """benchmarks/peak_memory.py over a stand-in of the shared data (12 COCO photos), its commands not run: each
    prints its argv."""
    from conftest import benchmark_module

    data = tmp_path / "data"
    for folder, key in [("flickr8k-dev", "pairs"), ("coco-mini-train", "pairs"), ("vqa-coco-yesno-train", "qa")]:
        (data / folder).mkdir(parents=True)
        rows = [{"image": f"{i:02}.jpg", "caption": "a dog", "question": "a dog?", "answer": "yes"} for i in range(12)]
        (data / folder / f"{key}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for r in rows:
            (data / folder / r["image"]).write_bytes(b"jpeg")
    module = benchmark_module("peak_memory", "s55")
    monkeypatch.setattr(module, "run", lambda argv, out: {"peak_rss_mb": 0})
    return lambda *argv: module.main([*argv, "--data", str(data), "--out", str(tmp_path / "out")])


def _argv(out: str, command: str) -> list[str]:
    return next(json.loads(line)["argv"] for line in out.splitlines() if f'"command": "{command}"' in line).split()


def test_peak_memory_with_no_photos_runs_the_commands_that_need_none(peak_memory, capsys):
    assert peak_memory("--photos", "0", "--only", "train_vqa,caption") == 0
    out = capsys.readouterr().out
    assert _argv(out, "train_vqa")[:3] == ["polymodal", "train", "vqa"]
    assert len(_argv(out, "caption")) == 2 + 10 + 1  # 10 COCO photos captioned, however few are indexed
    assert peak_memory("--photos", "2", "--only", "caption") == 0
    assert len(_argv(capsys.readouterr().out, "caption")) == 13


@pytest.mark.parametrize("photos, only, said", [("0", "index", "the index (which search and serve use) needs 1"),
                                                 ("0", "search_text", "the index (which search and serve use)"),
                                                 ("-1", "caption", "give 0 or more")])
def test_peak_memory_refuses_photos_a_command_cannot_run_with(peak_memory, capsys, photos, only, said):
    assert peak_memory("--photos", photos, "--only", only) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --photos {photos}: {said}") and err.count("\n") == 1, err
