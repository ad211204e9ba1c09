"""Mutation audit of the commits after bbdd5f1 (batch dependence of int8 exports, vqa --json warnings, --resume with
another --fusion, the unclosed-quote row count, the index tip, /v1/classify warnings): tests that kill the
mutations the existing suite let live, and tests of the two bugs it found (fixed in s32: a continued model's run
resumed from Python was refused; an unclosed quote reaching blank lines at EOF named the wrong lines). Fast: no ONNX
export (fakes stand in for the graphs)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from polymodal.errors import PolymodalError
from polymodal.models.fusion_encoder import FusionEncoderConfig
from polymodal.train.run_settings import check_same_fusion, check_same_run
from polymodal.train.trainer import TrainConfig


# -- check_same_fusion / check_same_run -----------------------------------------------------------------------------


def _saved(folder: Path, **arch) -> Path:
    (folder / "train_config.json").write_text(json.dumps({"arch": {"fusion": "concat", "dim": 32, **arch},
                                                          "train": {"lr": 0.001}}))
    return folder


@pytest.mark.parametrize("arch", [FusionEncoderConfig(fusion="gated"), {"fusion": "gated", "dim": 32}],
                         ids=["dataclass", "dict"])
def test_another_fusion_is_refused_naming_both_whether_arch_is_a_dataclass_or_a_dict(tmp_path, arch):
    _saved(tmp_path)
    with pytest.raises(PolymodalError, match=r"trained with --fusion concat \(asked now: gated\)") as error:
        check_same_fusion(tmp_path, arch)
    assert "--dim" not in str(error.value) and str(tmp_path / "train_config.json") in str(error.value)


def test_check_same_fusion_looks_at_the_fusion_only(tmp_path):
    """Other arch keys (dim, answers: the vocabulary is only known once the model is built) are check_same_run's,
    after the model is built."""
    _saved(tmp_path, answers=7)
    check_same_fusion(tmp_path, FusionEncoderConfig(fusion="concat", dim=64))
    check_same_fusion(tmp_path, {"fusion": "concat", "dim": 64, "answers": []})


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"arch": "concat"}', '{"arch": {"dim": 32}}', ""],
                         ids=["broken", "list", "arch-not-a-dict", "no-fusion-recorded", "empty"])
def test_check_same_fusion_leaves_a_run_it_cannot_read_to_the_checkpoint(tmp_path, content):
    """An older run, or a hand-edited file: nothing to compare, no crash (loading the checkpoint is the check)."""
    (tmp_path / "train_config.json").write_text(content)
    check_same_fusion(tmp_path, FusionEncoderConfig(fusion="gated"))
    check_same_fusion(tmp_path / "no-run-here", FusionEncoderConfig(fusion="gated"))


def test_another_run_names_flags_with_dashes_and_json_values(tmp_path):
    (tmp_path / "train_config.json").write_text(json.dumps({
        "arch": {**json.loads(json.dumps(FusionEncoderConfig().__dict__)), "fusion_options": {"layers": 2}},
        "train": {"tower_lr_scale": 0.1}}))
    with pytest.raises(PolymodalError) as error:
        check_same_run(tmp_path, FusionEncoderConfig(fusion_options={"layers": 3}),
                       TrainConfig.from_dict({"tower_lr_scale": 0.5}))
    message = str(error.value)
    assert '--fusion-options {"layers": 2} (asked now: {"layers": 3})' in message, message
    assert "--tower-lr-scale 0.1 (asked now: 0.5)" in message, message


class _Built(Exception):
    """Raised in place of building the model: everything before it (the checks) passed."""


def _qa(gallery, tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "question": f"is this a {n}?",
                                        "answer": a}) + "\n" for n, a in (("cat", "yes"), ("moon", "no"),
                                                                         ("coffee", "yes"), ("clock", "no"))))
    return path


def _pairs(gallery, tmp_path) -> Path:
    names = sorted(p.stem for p in gallery.glob("*.jpg"))
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": f"a photo of a {n}"}) + "\n"
                            for n in names))
    return path


def _old_run(folder: Path, fusion: str) -> Path:
    import torch

    folder.mkdir()  # a checkpoint the early resume check reads (epoch 0 of the run): the build comes after it
    torch.save({"step": 0, "epoch": 0, "best": float("-inf"), "bad_epochs": 0}, folder / "checkpoint.pt")
    (folder / "train_config.json").write_text(json.dumps({"arch": {"fusion": fusion}, "train": {}}))
    return folder


def _stop_at_build(monkeypatch, module, name):
    def build(*args, **kwargs):
        raise _Built

    monkeypatch.setattr(module, name, build)


def test_overwriting_a_run_with_another_fusion_is_not_refused(gallery, tmp_path, monkeypatch):
    """The fusion check is for --resume: --overwrite replaces the old run, whatever its fusion."""
    from polymodal.train import pretrain, vqa

    _stop_at_build(monkeypatch, vqa, "build_vqa_model")
    _stop_at_build(monkeypatch, pretrain, "build_model")
    out = _old_run(tmp_path / "run", "gated")
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(_Built):
        vqa.train_vqa(vqa.VQARecipe(qa=[str(_qa(gallery, tmp_path))], out=str(out), val_fraction=0.0,
                                    arch={"fusion": "concat"}), overwrite=True, progress=False)
    with pytest.raises(_Built):
        pretrain.train_pretrain(pretrain.PretrainRecipe(pairs=[str(_pairs(gallery, tmp_path))], out=str(out),
                                                        negatives="random", arch={"fusion": "concat"}),
                                overwrite=True, progress=False)


def test_resuming_a_continued_models_run_from_python_is_not_refused(gallery, tmp_path, monkeypatch):
    from polymodal.train import vqa

    _stop_at_build(monkeypatch, vqa, "build_vqa_model")
    out = _old_run(tmp_path / "run", "concat")  # as `train vqa --model easy-vqa` records it (easy-vqa: concat)
    with pytest.raises(_Built):
        vqa.train_vqa(vqa.VQARecipe(qa=[str(_qa(gallery, tmp_path))], out=str(out), model="easy-vqa",
                                    val_fraction=0.0), resume=True, progress=False)


def test_resuming_a_continued_models_pretraining_from_python_is_not_refused(gallery, tmp_path, monkeypatch):
    from polymodal.train import pretrain

    _stop_at_build(monkeypatch, pretrain, "build_model")
    out = _old_run(tmp_path / "run", "concat")
    with pytest.raises(_Built):
        pretrain.train_pretrain(pretrain.PretrainRecipe(pairs=[str(_pairs(gallery, tmp_path))], out=str(out),
                                                        model="easy-vqa", negatives="random", objectives={"itm": 1.0}),
                                resume=True, progress=False)


# -- the unclosed CSV quote ----------------------------------------------------------------------------------------


def _csv(gallery, tmp_path, text: str):
    from polymodal.data.pairs import _read_csv

    path = gallery / f"s32b-{abs(hash(text))}.csv"
    path.write_text(text)
    try:
        pairs, skipped = _read_csv(path)
    finally:
        path.unlink()
    return [p.caption for p in pairs], [(where.rsplit(":", 1)[1], why) for where, why in skipped]


def test_an_unclosed_quote_to_the_end_of_the_file_counts_each_line(gallery, tmp_path):
    captions, skipped = _csv(gallery, tmp_path, 'image,caption\ncat.jpg,a cat\nmoon.jpg,"a moon\nclock.jpg,a clock\n'
                                                'coffee.jpg,a coffee\n')
    assert captions == ["a cat"]
    assert [where for where, _ in skipped] == ["3-5", "4", "5"]
    assert all("runs over lines 3-5" in why and "their 3 lines were read as one row" in why for _, why in skipped)


def test_an_unclosed_quote_before_trailing_blank_lines_names_its_own_line(gallery, tmp_path):
    _, skipped = _csv(gallery, tmp_path, 'image,caption\ncat.jpg,a cat\nmoon.jpg,"a moon\nclock.jpg,a clock\n\n\n')
    assert skipped[0][0].startswith("3-")


# -- tables of the tries (hand-made reports) ------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _check_table(lines: list[str]) -> list[dict]:
    """Every row as wide as the header, the separator too; rows as {title: cell}."""
    table = [l for l in lines if l.startswith("|")]
    head, sep, rows = _cells(table[0]), _cells(table[1]), [_cells(l) for l in table[2:]]
    assert len(sep) == len(head) and set(sep) == {"---"}, (head, sep)
    assert all(len(r) == len(head) for r in rows), (head, rows)
    return [dict(zip(head, r)) for r in rows]


def test_tries_table_puts_the_extra_figure_in_its_own_column():
    from polymodal.export.variants import tries_table

    tries = [{"graph": "grid", "variant": "int8_dynamic", "status": "kept", "items_per_s": 50.0, "x_fp32_onnx": 1.5,
              "accuracy": 0.9, "drop_points": 0.5, "answers_changed_alone": "2 of 20", "reason": "faster"},
             {"graph": "grid", "variant": "int8_static", "status": "failed", "reason": "no kernel"}]
    rows = _check_table(tries_table(tries, ("items_per_s", "items/s"), ("accuracy", "accuracy"),
                                    ("answers_changed_alone", "answers changed when asked alone")))
    assert rows[0]["answers changed when asked alone"] == "2 of 20" and rows[0]["why"] == "faster"
    assert rows[0]["accuracy"] == "0.9" and rows[1]["answers changed when asked alone"] == ""
    assert rows[1]["why"] == "no kernel"
    plain = _check_table(tries_table(tries, ("items_per_s", "items/s"), ("accuracy", "accuracy")))
    assert "answers changed when asked alone" not in plain[0] and plain[0]["why"] == "faster"


def test_the_vqa_report_table_shows_answers_changed_alone():
    from polymodal.export.fusion_export import vqa_report_table

    report = {"model": "easy-vqa", "questions": 20, "parity": {"same_top1": 1.0, "min_logit_cosine": 0.9999},
              "accuracy_pytorch": {"accuracy": 1.0},
              "accuracy_onnx": {"accuracy": 1.0}, "accuracy_served": {"accuracy": 1.0}, "served": {"grid": "fp32"},
              "tries": [{"graph": "grid", "variant": "int8_dynamic", "status": "rejected", "items_per_s": 9.0,
                         "x_fp32_onnx": 0.8, "accuracy": 0.95, "drop_points": 5.0,
                         "answers_changed_alone": "3 of 20", "reason": "slower"}]}
    rows = _check_table(vqa_report_table(report).splitlines())
    assert rows[0]["answers changed when asked alone"] == "3 of 20" and rows[0]["why"] == "slower"


def test_the_embedding_report_table_shows_alone_vs_batch_in_its_column():
    from polymodal.export.onnx_export import report_table

    report = {"model": "lite", "validation": "sample", "reference_pytorch_fp32": {"t2i_R@5": 1.0, "i2t_R@5": 1.0},
              "pytorch_fp32_items_per_s": {"image": 10, "text": 100}, "served": {"image": "fp32", "text": "fp32"},
              "served_drop_points": 0.0,
              "tries": [{"tower": "text", "variant": "fp32", "status": "baseline", "items_per_s": 100.0,
                         "min_cosine_vs_pytorch": 1.0, "t2i_R@5": 1.0, "i2t_R@5": 1.0, "drop_points": 0.0,
                         "reason": "parity"},
                        {"tower": "text", "variant": "int8_dynamic", "status": "rejected", "items_per_s": 150.0,
                         "x_fp32_onnx": 1.5, "min_cosine_vs_pytorch": 0.97, "alone_vs_batch_min_cosine": 0.978,
                         "t2i_R@5": 0.9, "i2t_R@5": 0.95, "drop_points": 10.0, "reason": "drop"}]}
    rows = _check_table(report_table(report).splitlines())
    assert rows[0]["alone vs in a batch (min cosine)"] == "" and rows[1]["alone vs in a batch (min cosine)"] == "0.978"
    assert rows[1]["t2i R@5"] == "0.9" and rows[1]["min cosine"] == "0.97" and rows[1]["why"] == "drop"


# -- answers changed when asked alone (fake graphs) -----------------------------------------------------------------


def test_answers_changed_alone_counts_the_answers_a_lone_question_changes(tmp_path, monkeypatch):
    """A fake int8 graph whose answer to questions 0 and 2 is another one when asked alone: "2 of 6" (6 rows, fewer
    than ALONE_CHECKS); every question is asked alone, and only the changed ones count."""
    from types import SimpleNamespace

    from polymodal.export import fusion_export, fusion_runtime, onnx_export
    from polymodal.export import variants as V

    rows = [SimpleNamespace(image=f"img{i}", question=f"q{i}", answer="az"[i // 4], answer_type="other")
            for i in range(6)]  # 4 of 6 answered right

    class Fake:
        def __init__(self, out):
            self.grid = SimpleNamespace(run=lambda *a: None)

        def release_memory(self, image, question):
            pass

        def predict(self, images, questions):
            if len(questions) == 1:  # alone
                return [("b" if questions[0] in ("q0", "q2") else "a", 0.5)]
            return [("a", 0.9) for _ in questions]

    monkeypatch.setattr(fusion_runtime, "OnnxFusionEncoder", Fake)
    monkeypatch.setattr(V, "int8_dynamic", lambda fp32, path, calibration=None: path.write_bytes(b"x"))
    monkeypatch.setattr(onnx_export, "paired_speed", lambda run, base, items, seconds, release: (20.0, 10.0))
    monkeypatch.setattr("polymodal.eval.vqa.accuracy_by_type",
                        lambda said, rows: {"accuracy": sum(s == r.answer for s, r in zip(said, rows)) / len(rows)})
    fp32 = SimpleNamespace(transform=lambda images: np.zeros((len(images), 3, 4, 4), np.float32),
                           tokenizer=lambda questions: {"input_ids": np.zeros((len(questions), 3), np.int64)},
                           grid=SimpleNamespace(run=lambda *a: None), release_memory=lambda image, question: None)
    tries = fusion_export._try_variants(tmp_path, {"files": {"grid": "grid.onnx"}}, fp32, rows, 1.0,
                                        {"grid": ("int8_dynamic",)}, 1.0, 0.01, lambda m: None)
    assert [t["answers_changed_alone"] for t in tries] == ["2 of 6"], tries
    assert tries[0]["accuracy"] == 0.6667 and tries[0]["drop_points"] == 33.33  # rounded in the report


# -- vqa --json, /v1/classify, the index tip ------------------------------------------------------------------------


def test_vqa_json_names_the_model_by_its_key(gallery, capsys):
    from polymodal import cli

    assert cli.main(["vqa", str(gallery / "cat.jpg"), "what shape is it?", "--model", "easy-vqa", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert re.fullmatch(r"easy-vqa@[0-9a-f]{12}", out["model"]) and isinstance(out["warnings"], list), out


def test_classify_warns_of_one_label_given_twice(lite, db, gallery):
    """A label given twice is one label (rank_labels keeps one copy): it scores 1.0 as one label does."""
    from fastapi.testclient import TestClient

    from polymodal.serve.app import create_app

    image = base64.b64encode((gallery / "cat.jpg").read_bytes()).decode()
    with TestClient(create_app(lite, db)) as client:
        reply = client.post("/v1/classify", json={"image": image, "labels": ["dog", "dog"]}).json()
        assert reply["results"][0]["labels"] == [{"label": "dog", "score": 1.0}]
        assert len(reply["warnings"]) == 1 and "with one label" in reply["warnings"][0]
        again = client.post("/v1/classify", json={"image": image, "labels": ["dog", "cat"]}).json()
        assert again["warnings"] == []  # nothing left over from the request before


def test_the_tip_asks_for_an_export_when_the_cache_folder_holds_no_finished_one(gallery, fresh_cache, tmp_path,
                                                                               capsys, monkeypatch):
    """An export folder without onnx_config.json (an export stopped half way) is no export."""
    from polymodal import cli

    monkeypatch.setattr(cli, "TIP_RUNTIME_AT", 15)
    (fresh_cache / "onnx" / "lite").mkdir(parents=True)
    assert cli.main(["index", str(gallery), "--db", str(tmp_path / "db")]) == 0
    assert "(after `polymodal export onnx lite`)" in capsys.readouterr().err


def test_alone_vs_batch_is_the_smallest_cosine_over_the_first_rows():
    from polymodal.export.onnx_export import alone_vs_batch

    batched = np.eye(4, dtype=np.float32)
    alone = batched[:3].copy()
    assert alone_vs_batch(alone, batched) == 1.0
    alone[1] = [0.6, 0.8, 0, 0]  # the second item moved (cosine 0.8 with its batched self)
    assert alone_vs_batch(alone, batched) == 0.8  # the smallest, not the largest or the mean
    assert alone_vs_batch(alone, np.vstack([np.zeros((1, 4), np.float32), batched])) == 0.0  # rows taken in order
