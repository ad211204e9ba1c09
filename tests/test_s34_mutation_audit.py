"""Stop 34's mutation audit (a helper: 60 mutations of this stop's changes, 26 let through by the other tests):
the tests that catch them, one or more mutants each (the report's ids in the comments)."""

import json
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.export.runtime import ONNX_CONFIG
from tests.test_cli_encoders_audit import spy_load  # noqa: F401 - fixture
from tests.test_qdrant import built  # noqa: F401 - fixture


def _fake_export(folder):
    folder.mkdir(parents=True)
    (folder / ONNX_CONFIG).write_text("{}")
    return folder


# G1 (kills R4 and O4)
def test_auto_runtime_finds_a_home_relative_export_folder(tmp_path, monkeypatch):
    """`polymodal.load("~/exports/lite")` and `--model '~/exports/lite'` run the export with onnx, as the
    onnx branch itself expands the path."""
    from polymodal.cli_options import resolve_runtime
    from polymodal.export import runtime

    monkeypatch.setenv("HOME", str(tmp_path))
    export = _fake_export(tmp_path / "exports" / "lite")
    loaded = []
    monkeypatch.setattr(runtime, "load_onnx", lambda folder, **kw: loaded.append(folder) or SimpleNamespace())
    polymodal.load("~/exports/lite")
    assert loaded == [export]
    args = cli.build_parser().parse_args(["vqa", "i.png", "q?", "--model", "~/exports/lite"])
    resolve_runtime(args)
    assert args.runtime == "onnx"


# G2 (kills SV1 and SV2)
def test_serve_without_model_runs_an_index_built_from_an_export_with_onnx(tmp_path, monkeypatch):
    """No --model: the index's model (an export) is served, and --threads reaches create_app, which gives it to the
    onnx models (a mutant that dropped it for auto reached neither torch nor onnxruntime)."""
    from PIL import Image

    from polymodal.index import ImageIndex
    from polymodal.serve import app as serve_app
    from tests.test_index import FakeModel

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(photos / "red.png")
    db = tmp_path / "db"
    ImageIndex(db).update(photos, FakeModel(), progress=False)
    export = _fake_export(tmp_path / "export")
    with sqlite3.connect(db / "meta.sqlite") as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'model_name'", (str(export),))
    seen = {}

    def create_app(model, db_path, **kw):
        seen.update(model=model, **kw)
        raise PolymodalError("stopped before loading")

    monkeypatch.setattr(serve_app, "create_app", create_app)
    assert cli.main(["serve", "--db", str(db), "--port", "0", "--threads", "2"]) == 2
    # create_app settles auto per model (test_s34_custom_data_audit: the export with onnx, given the threads)
    assert seen["model"] == str(export) and seen["runtime"] == "auto" and seen["threads"] == 2


# G3 (uses its spy_load fixture; kills C5 and P1)
def test_eval_vqa_settles_the_auto_runtime_from_the_model(capsys, spy_load, tmp_path, monkeypatch):
    import polymodal.eval.vqa as ev

    monkeypatch.setattr(ev, "read_qa", lambda path: [SimpleNamespace(image="a.png")])
    monkeypatch.setattr(ev, "vqa_accuracy", lambda model, rows, **kw: {"accuracy": 1.0})
    export = _fake_export(tmp_path / "vqa-export")
    spy_load.models[str(export)] = spy_load.models["fake-vqa"]
    for model, runtime in (("fake-vqa", "torch"), (str(export), "onnx")):
        assert cli.main(["eval", "vqa", "--qa", "q.jsonl", "--model", model]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["runtime"] == runtime and spy_load.calls[-1]["runtime"] == runtime, model


# G4 (kills P2)
def test_caption_commands_run_an_export_folder_with_onnx(tmp_path):
    from polymodal.cli_options import resolve_runtime

    export = _fake_export(tmp_path / "captioner-export")
    for argv in (["caption", "i.png", "--model", str(export)],
                 ["eval", "captions", "--pairs", "p.jsonl", "--model", str(export)]):
        args = cli.build_parser().parse_args(argv)
        resolve_runtime(args)
        assert args.runtime == "onnx", argv


# G5 (kills V4)
def test_itm_wrong_answers_come_from_the_vocabulary_too():
    from polymodal.eval.vqa import QARow
    from polymodal.train.vqa import _itm_texts

    rows = [QARow("a.jpg", f"q{i}", "yes") for i in range(5)]  # one answer among the rows
    texts, pos, neg = _itm_texts(rows, ["yes", "no"], seed=0)
    assert [texts[n] for n in neg] == [f"q{i} no" for i in range(5)]


# G6 (kills K2 and K3)
def test_only_both_identity_heads_start_as_lite():
    from polymodal.models.dual_encoder import DualEncoderConfig

    assert DualEncoderConfig(image_head="conse_residual", text_head="residual", embed_dim=384).starts_as_lite
    assert not DualEncoderConfig(image_head="conse_residual", text_head="linear", embed_dim=384).starts_as_lite
    assert not DualEncoderConfig(image_head="linear", text_head="residual", embed_dim=384).starts_as_lite
    assert not DualEncoderConfig().starts_as_lite


# G7 (kills N2 and N3)
def test_name_after_run_renames_the_model_as_well_as_its_config(tmp_path, monkeypatch):
    from dataclasses import dataclass

    from polymodal.train.run_settings import name_after_run

    @dataclass
    class Config:
        name: str

    model = SimpleNamespace(config=Config("default"), name="default")
    name_after_run(model, tmp_path / "holiday-photos")
    assert model.config.name == model.name == "holiday-photos"  # the loaded model's key, not only config.json
    (tmp_path / "beach").mkdir()
    monkeypatch.chdir(tmp_path / "beach")
    model = SimpleNamespace(config=Config("captioner"), name="captioner")
    name_after_run(model, ".")  # --out .
    assert model.config.name == model.name == "beach"
    mine = SimpleNamespace(config=Config("mine"), name="mine")
    name_after_run(mine, tmp_path / "x")
    assert mine.name == "mine"
    clash = SimpleNamespace(config=Config("default"), name="default")
    name_after_run(clash, tmp_path / "runs" / "default")  # a run folder named after a built-in: no clash either
    assert clash.name == clash.config.name == "default-run"


# G8 (kills X3)
@pytest.mark.parametrize("report", ["not json", "[1, 2]"])
def test_exporting_an_export_with_an_unreadable_report_still_says_so(report, tmp_path, capsys):
    export = _fake_export(tmp_path / "exports" / "ft")
    (export / "report.json").write_text(report)
    assert cli.main(["export", "onnx", str(export), "--out", str(tmp_path / "again")]) == 2
    assert f"{export} is already an ONNX export; use it as it is" in capsys.readouterr().err


# G9 (kills T2)
def test_resume_of_a_run_with_a_checkpoint_is_not_called_empty(tmp_path, capsys):
    """A run folder holding checkpoint.pt but no train_config.json (an older run) is no mistyped --out."""
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not read here")
    assert cli.main(["train", "contrastive", "--out", str(run), "--resume", "--quiet"]) == 2
    assert "no checkpoint to resume" not in capsys.readouterr().err


# G10 (kills SC2)
def test_a_photo_opposite_the_query_scores_minus_1(tmp_path):
    from PIL import Image

    from polymodal.index import ImageIndex
    from tests.test_index import FakeModel

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.new("RGB", (8, 8), tuple(int(c) for c in rng.integers(0, 256, 3))).save(folder / f"{i}.png")
    model, index = FakeModel(dim=384), ImageIndex(tmp_path / "db")
    index.update(folder, model, progress=False)
    query = -model.encode_image([str(folder / "0.png")])
    hits = index.search(query, k=8)[0]
    assert hits[-1].score == pytest.approx(-1, abs=1e-3) and hits[-1].score >= -1.0


# G11 (uses its `built` fixture; kills SC3)
def test_qdrant_scores_are_clipped_to_the_cosine_range(built, monkeypatch):
    _, index, collection = built
    collection.push(index, progress=False)
    client = collection._client_()
    points = [SimpleNamespace(payload={"path": "/p/a.png", "host": "h"}, score=1.0000001, id="a"),
              SimpleNamespace(payload={"path": "/p/b.png", "host": "h"}, score=-1.0000001, id="b")]
    monkeypatch.setattr(client, "query_batch_points", lambda *a, **kw: [SimpleNamespace(points=points)])
    from tests.test_index import FakeModel

    hits = collection.search(FakeModel().encode_text(["red"]), 2)[0]
    assert [h.score for h in hits] == [1.0, -1.0]


# G12 (kills C3; the resync test only checks the exit code)
def test_index_resync_says_the_indexs_model_folder_has_moved(tmp_path, capsys):
    from PIL import Image

    from polymodal.index import ImageIndex
    from tests.test_index import FakeModel

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(photos / "green.png")
    db = tmp_path / "db"
    ImageIndex(db).update(photos, FakeModel(), progress=False)
    moved = tmp_path / "runs" / "mine" / "model"
    with sqlite3.connect(db / "meta.sqlite") as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'model_name'", (str(moved),))
    assert cli.main(["index", str(photos), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"was built with the model at {moved}, which is no longer there; pass --model" in err


# G13 (kills N4 and N6: continuing `easy-vqa` with train vqa / pretrain)
@pytest.mark.parametrize("task", ["vqa", "pretrain"])
def test_a_continued_easy_vqa_takes_its_run_name(task, tmp_path):
    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    if task == "vqa":
        data = tmp_path / "qa.jsonl"
        data.write_text("".join(json.dumps({"image": str(paths[i]), "question": q, "answer": a}) + "\n"
                                for q, a, i in list(zip(questions, answers, image_ids))[:24]))
        flags = ["--qa", str(data)]
    else:
        data = tmp_path / "pairs.jsonl"
        data.write_text("".join(json.dumps({"image": str(paths[i]), "caption": f"shape {i}"}) + "\n" for i in range(6)))
        flags = ["--pairs", str(data), "--objectives", "itm:1"]  # easy-vqa has no mlm or mrm head
    run = tmp_path / "my-shapes"
    assert cli.main(["train", task, *flags, "--model", "easy-vqa", "--out", str(run), "--epochs", "1",
                     "--val-fraction", "0", "--quiet"]) == 0
    assert json.loads((run / "model" / "config.json").read_text())["name"] == "my-shapes"


# G14 (kills N5: a fresh captioner's config is named `captioner`)
def test_a_trained_captioner_takes_its_run_name(tmp_path):
    from tests.test_captioner import _pairs

    run = tmp_path / "my-captions"
    assert cli.main(["train", "captioner", "--pairs", str(_pairs(tmp_path)), "--out", str(run), "--epochs", "1",
                     "--batch-size", "4", "--val-fraction", "0", "--quiet"]) == 0
    assert json.loads((run / "model" / "config.json").read_text())["name"] == "my-captions"


# G15 (kills X4)
def test_export_of_a_built_in_name_is_not_taken_for_a_same_named_export_folder(tmp_path, monkeypatch, capsys):
    """`polymodal export onnx lite --out lite` leaves ./lite an export; exporting the built-in again from that folder
    must not be refused as "already an ONNX export" (here it stops at the next check instead)."""
    monkeypatch.chdir(tmp_path)
    _fake_export(tmp_path / "lite")
    assert cli.main(["export", "onnx", "lite", "--out", str(tmp_path / "out"), "--val-limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "--val-limit must be at least 2" in err and "already an ONNX export" not in err


# G16 (kills T1, T4, T5: --resume --overwrite on a folder that is not there yet)
@pytest.mark.parametrize("command", [["train", "contrastive", "--pairs", "p.jsonl"], ["train", "vqa", "--qa", "q.jsonl"]])
def test_resume_with_overwrite_on_a_missing_folder_says_not_both(command, tmp_path, capsys):
    assert cli.main([*command, "--out", str(tmp_path / "run"), "--resume", "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not both" in err and "no checkpoint to resume" not in err


# G17 (kills TR2: a read error naming the file kept only "...checkpoint")
def test_a_checkpoint_read_error_keeps_the_file_name(tmp_path, monkeypatch):
    import torch

    from tests.test_trainer_loop import _trainer

    _trainer(tmp_path, epochs=1).fit()
    trainer = _trainer(tmp_path, epochs=2)
    message = f"[Errno 5] Input/output error: '{trainer.checkpoint_path}'"

    def unreadable(*args, **kwargs):
        raise OSError(message)

    monkeypatch.setattr(torch, "load", unreadable)
    with pytest.raises(PolymodalError) as caught:
        trainer.fit(resume=True)
    assert f"({message}): it is damaged" in str(caught.value)


# G18 (kills SV4 and SV5 deterministically; the SIGINT test only catches them by
# timing, and at 80e31a5 it failed here on the unmutated code too)
def test_the_serving_line_comes_after_uvicorn_has_started(lite, db, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    before = []

    async def startup(self, sockets=None):  # uvicorn's startup: what had been printed when it ran
        before.append(capsys.readouterr().out)
        self.started = True

    async def nothing(self, *args, **kwargs):
        return None

    monkeypatch.setattr(uvicorn.Server, "startup", startup)
    monkeypatch.setattr(uvicorn.Server, "main_loop", nothing)
    monkeypatch.setattr(uvicorn.Server, "shutdown", nothing)
    assert cli.main(["serve", "--db", str(db), "--port", "0", "--model", "lite"]) == 0
    assert len(before) == 1 and "polymodal: serving" not in before[0]
    assert "polymodal: serving lite" in capsys.readouterr().out


def test_exporting_a_home_relative_export_says_it_already_is_one(tmp_path, monkeypatch, capsys):
    """A quoted '~/exports/ft' was "unknown model" (the helper's third finding)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    _fake_export(tmp_path / "exports" / "ft")
    assert cli.main(["export", "onnx", "~/exports/ft", "--out", str(tmp_path / "again")]) == 2
    # the CLI expands a leading ~ of every path option (stop 43): the message names the folder it found
    assert f"{tmp_path / 'exports' / 'ft'} is already an ONNX export" in capsys.readouterr().err
