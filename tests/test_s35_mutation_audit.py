"""Gaps a mutation audit of stop 35's changes found (helper): each test kills a mutant the other tests let live."""

import contextlib
import io
import json
import shlex

import pytest

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.training_photos import TrainingPhotos, read_training_photos, read_validation_photos, write_training_photos

from test_s30_audit import _hashes
from test_s35_progress import _classify, shared_lite  # noqa: F401 - shared_lite is a fixture


class _SavesConfig:
    def save(self, folder):
        folder.mkdir(parents=True, exist_ok=True)


# 1.04 -----------------------------------------------------------------------------------------------------------
def test_a_continued_run_keeps_the_start_models_validation_photos(gallery, tmp_path):
    write_training_photos(tmp_path / "start", _hashes(gallery, "cat"), _hashes(gallery, "flower"))
    TrainingPhotos([gallery / "rocket.jpg"], tmp_path / "start", [gallery / "clock.jpg"]).save(_SavesConfig(),
                                                                                                tmp_path / "m")
    assert read_training_photos(tmp_path / "m") == _hashes(gallery, "cat", "rocket")
    assert read_validation_photos(tmp_path / "m") == _hashes(gallery, "flower", "clock")


# 1.12 -----------------------------------------------------------------------------------------------------------
def test_an_item_whose_photo_was_not_among_those_hashed_gets_no_flags(gallery, tmp_path):
    from polymodal.eval.per_item import write_items

    write_training_photos(tmp_path / "m", _hashes(gallery, "cat"))
    write_items(tmp_path / "items.jsonl", [{"image": "elsewhere.jpg"}], str(tmp_path / "m"), [gallery / "cat.jpg"])
    row = json.loads((tmp_path / "items.jsonl").read_text())
    assert row["seen_in_training"] is None and row["seen_in_validation"] is None


# 2.02 -----------------------------------------------------------------------------------------------------------
def test_the_bar_moves_by_a_batch_retried_one_by_one():
    from polymodal.models.inputs import each_or_error

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    def fn(chunk):
        if "bad" in chunk:
            raise PolymodalError("cannot read bad")
        return list(chunk)

    bar = Bar()
    assert each_or_error(fn, ["ok", "bad", "ok", "ok"], 2, bar) == ["ok", "cannot read bad", "ok", "ok"]
    assert bar.n == 4


# 2.06 -----------------------------------------------------------------------------------------------------------
def test_exactly_one_batch_of_photos_shows_no_bar(gallery, shared_lite, capsys):  # noqa: F811
    photos = sorted(gallery.glob("*.jpg"))
    one_batch = (photos * (cli.CLASSIFY_BATCH // len(photos) + 1))[: cli.CLASSIFY_BATCH]
    _, err = _classify(capsys, *one_batch, "--labels", "cat,rocket")
    assert "classifying" not in err


# 2.08 / 2.09 / 2.10 ---------------------------------------------------------------------------------------------
def _labels(tmp_path, n, tag):
    path = tmp_path / f"{tag}.txt"
    path.write_text("".join(f"{tag} thing {i}\n" for i in range(n)))
    return path


def test_exactly_one_batch_of_prompts_shows_no_bar(gallery, shared_lite, tmp_path, capsys):  # noqa: F811
    _, err = _classify(capsys, gallery / "cat.jpg", "--labels-from", _labels(tmp_path, cli.CLASSIFY_BATCH, "exact"))
    assert "class prompts" not in err


def test_a_long_label_list_with_json_shows_no_bar(gallery, shared_lite, tmp_path, capsys):  # noqa: F811
    out, err = _classify(capsys, gallery / "cat.jpg", "--labels-from",
                         _labels(tmp_path, cli.CLASSIFY_BATCH + 1, "quiet"), "--json")
    assert "class prompts" not in err and json.loads(out)


def test_prompts_count_every_template(gallery, shared_lite, tmp_path, capsys):  # noqa: F811
    labels = _labels(tmp_path, cli.CLASSIFY_BATCH // 2 + 1, "templated")  # 17 labels x 2 templates = 34 prompts
    _, err = _classify(capsys, gallery / "cat.jpg", "--labels-from", labels, "--template", "a photo of a {}",
                       "--template", "a picture of a {}")
    assert "class prompts: 100%" in err


# 2.13 / 2.14 ----------------------------------------------------------------------------------------------------
def test_search_texts_of_one_chunk_shows_no_bar(shared_lite, tmp_path, capsys, monkeypatch):  # noqa: F811
    from polymodal.apps import text_search

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a caption, number {i}\n" for i in range(text_search._ENCODE_CHUNK)))
    assert cli.main(["search", "a cat", "--texts", str(texts), "--model", "lite", "-k", "1"]) == 0
    assert "texts:" not in capsys.readouterr().err


# 2.19 / 2.21 ----------------------------------------------------------------------------------------------------
def _qa(tmp_path, gallery, extra=()):
    qa = tmp_path / "qa.jsonl"
    rows = [{"image": str(gallery / f"{n}.jpg"), "question": f"is there a {n}?", "answer": "yes"}
            for n in ("cat", "rocket", "coffee")] + list(extra)
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return qa


def test_vqa_accuracy_without_progress_shows_no_bar(gallery, tmp_path, capsys):
    from polymodal.eval.vqa import read_qa, vqa_accuracy

    vqa_accuracy(polymodal.load("coco-yesno"), read_qa(_qa(tmp_path, gallery)))
    assert "questions" not in capsys.readouterr().err


def test_the_questions_bar_counts_only_the_rows_asked(gallery, tmp_path, capsys):
    unscorable = {"image": str(gallery / "cat.jpg"), "question": "which colour?", "answer": "red",
                  "choices": ["red", "blue"]}  # coco-yesno scores none of them: counted wrong
    assert cli.main(["eval", "vqa", "--qa", str(_qa(tmp_path, gallery, [unscorable])), "--model", "coco-yesno"]) == 0
    err = capsys.readouterr().err
    # since stop 45 such a row is asked too (as an open question, its answer dropped), so that an unreadable photo
    # counts as unreadable, not as a scored wrong row: the bar counts every row the model is asked, here all 4
    assert "questions: 100%" in err and "4/4" in err


# 3.06 / 3.07 / 3.08 ---------------------------------------------------------------------------------------------
def test_a_captioner_exports_hint_names_the_export_folder(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import polymodal.export.caption_export as cx

    class Captioner:
        def caption(self, *a, **k):
            return []

    monkeypatch.setattr(polymodal, "load", lambda *a, **k: Captioner())
    monkeypatch.setattr(cx, "export_captioner_onnx", lambda *a, **k: {})
    monkeypatch.setattr(cx, "caption_report_table", lambda report: "table")
    (tmp_path / "cap").mkdir()  # a saved captioner's folder (polymodal.load is faked)
    (tmp_path / "cap" / "config.json").write_text("{}")  # (stop 52: a folder holding no model is refused first)
    out = tmp_path / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["export", "onnx", str(tmp_path / "cap"), "--out", str(out), "--variants", ""]) == 0
    hint = printed.getvalue().strip().splitlines()[-1]
    assert f"polymodal.load({str(out)!r})" in hint
    argv = shlex.split(hint.split("`")[1])
    assert argv[:2] == ["polymodal", "caption"] and argv[argv.index("--model") + 1] == str(out)
    assert "--runtime" not in argv


# 4.06 -----------------------------------------------------------------------------------------------------------
def test_embed_throughput_alternates_runtimes(capsys, monkeypatch):
    import polymodal.encoders.frozen_trunk as trunk
    from test_benchmarks_run import run_benchmark

    monkeypatch.setattr(trunk, "bf16_supported", lambda: True)  # emulated here: slow, but it runs
    rows = run_benchmark("embed_throughput", ["--runtime", "torch,torch-bf16", "--batches", "1,2",
                                              "--seconds", "0.05"], capsys)
    measured = [(r["batch"], r["kind"], r["runtime"]) for r in rows if "ratio" not in r]
    assert measured == [(b, k, r) for b in (1, 2) for k in ("images", "texts") for r in ("torch", "torch-bf16")]


# 4.01 / 4.02 on a host WITH bf16 kernels (here they are killed only because this CPU has none) -------------------
def test_runnable_says_nothing_when_bf16_was_not_asked_for(capsys, monkeypatch):
    import sys

    import polymodal.encoders.frozen_trunk as trunk
    from test_benchmarks_run import BENCHMARKS

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("cpu_runtimes", None)
    from cpu_runtimes import runnable

    monkeypatch.setattr(trunk, "bf16_supported", lambda: False)
    assert runnable(["torch", "onnx"], "bench") == ["torch", "onnx"] and capsys.readouterr().out == ""
