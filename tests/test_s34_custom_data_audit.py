"""What a helper found fine-tuning, indexing, exporting and serving its own captioned photos (stop 34), kept fixed."""

import json
from pathlib import Path

import pytest

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.train.metrics import read_metrics
from tests.conftest import cli_json

PHOTOS = {name: desc for name, (_, desc) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items()}
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "default.json"


@pytest.fixture(scope="module")
def pairs(gallery):
    path = gallery / "s34.jsonl"
    path.write_text("".join(json.dumps({"image": f"{n}.jpg", "caption": d}) + "\n" for n, d in PHOTOS.items()))
    return path


def test_the_recipe_scores_lite_as_epoch_0(pairs, tmp_path):
    """recipes/default.json's heads start as the identity over lite's space, so the run scores lite before training
    and RUN/model stays lite's embedding unless an epoch beats it. On 340 photos its first epoch halved lite's
    image->text R@5, and nothing in the run showed lite's figures."""
    run = tmp_path / "recipe"
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--val-pairs", str(pairs), "--out", str(run),
                     "--config", str(RECIPE), "--epochs", "1", "--views", "1", "--quiet"]) == 0
    start = next(r for r in read_metrics(run) if r["split"] == "val" and r["epoch"] == 0)
    lite = cli_json(["eval", "retrieval", "--pairs", str(pairs), "--model", "lite"])
    for key in ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5"):
        assert start[f"val/{key}"] == pytest.approx(lite[key], abs=1e-3), key
    plain = tmp_path / "plain"  # new linear heads are random: nothing to keep, no epoch 0
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--val-pairs", str(pairs), "--out", str(plain),
                     "--epochs", "1", "--embed-dim", "16", "--quiet"]) == 0
    assert [r["epoch"] for r in read_metrics(plain) if r["split"] == "val"] == [1]


def test_index_resyncs_with_the_model_the_index_records(pairs, gallery, tmp_path):
    """`polymodal index FOLDER --db DB` (the README's re-sync) refused an index built with --model: it fell back to
    lite, while search and serve use the index's model."""
    run = tmp_path / "run"
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--out", str(run), "--epochs", "1",
                     "--embed-dim", "16", "--val-fraction", "0", "--quiet"]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat", "coffee"):
        (photos / f"{name}.jpg").write_bytes((gallery / f"{name}.jpg").read_bytes())
    db = str(tmp_path / "db")
    assert cli_json(["index", str(photos), "--db", db, "--model", str(run / "model"), "--json"])["added"] == 2
    (photos / "rocket.jpg").write_bytes((gallery / "rocket.jpg").read_bytes())
    out = cli_json(["index", str(photos), "--db", db, "--json"])
    assert (out["added"], out["unchanged"]) == (1, 2) and out["index"]["model_name"] == str((run / "model").resolve())
    fresh = cli_json(["index", str(photos), "--db", str(tmp_path / "db2"), "--json"])  # a new index: lite
    assert fresh["index"]["model_name"] == "lite"
    (run / "model").rename(run / "moved")
    assert cli.main(["index", str(photos), "--db", db]) == 2  # the recorded model folder moved: one line, as search


def test_exporting_an_export_says_it_already_is_one(tmp_path, capsys):
    """It said "default cannot be exported to ONNX; these kinds of model export: ... default ...": contradictory,
    and silent about the folder being an export already."""
    from polymodal.export.runtime import ONNX_CONFIG

    export = tmp_path / "exports" / "ft"
    export.mkdir(parents=True)
    (export / ONNX_CONFIG).write_text("{}")
    (export / "report.json").write_text(json.dumps({"model": "default@7597405e446b"}))
    assert cli.main(["export", "onnx", str(export), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert f"{export} is already an ONNX export (of default@7597405e446b); use it as it is" in err
    assert not (tmp_path / "again").exists()


def test_a_model_trained_under_a_built_in_name_takes_its_run_name(pairs, tmp_path):
    """recipes/default.json names its arch "default": a user's model trained with it was called `default` in its
    index key, /v1/info and errors, with only the version hash telling it from the built-in."""
    run = tmp_path / "holiday-photos"
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--out", str(run), "--config", str(RECIPE),
                     "--epochs", "1", "--views", "1", "--val-fraction", "0", "--quiet"]) == 0
    assert json.loads((run / "model" / "config.json").read_text())["name"] == "holiday-photos"
    assert cli.main(["train", "contrastive", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert json.loads((run / "model" / "config.json").read_text())["name"] == "holiday-photos"
    plain = tmp_path / "plain"  # a name that is no built-in's stays
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--out", str(plain), "--epochs", "1",
                     "--embed-dim", "16", "--val-fraction", "0", "--quiet"]) == 0
    assert json.loads((plain / "model" / "config.json").read_text())["name"] == "dual-encoder"



@pytest.mark.parametrize("command", [["train", "contrastive"], ["train", "vqa"], ["train", "captioner"]])
def test_resume_of_a_folder_without_a_run_names_the_folder(command, tmp_path, capsys):
    """`--out runs/reusme --resume` (a typo) said "pass --pairs FILE and --out RUN_DIR", though --out was passed."""
    missing = tmp_path / "reusme"
    assert cli.main([*command, "--out", str(missing), "--resume", "--quiet"]) == 2
    assert f"--out {missing} does not exist: no checkpoint to resume; check the path" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main([*command, "--out", str(tmp_path / "empty"), "--resume", "--quiet"]) == 2
    assert "holds no run (no train_config.json): no checkpoint to resume" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not any((tmp_path / "empty").iterdir())


def test_an_index_folder_as_model_says_what_it_is(gallery, tmp_path, capsys):
    """`search --db IDX --model IDX` (and classify) said IDX had "neither config.json nor a .pt/.pth/.bin/.safetensors
    file", where a run folder got a hint."""
    db = tmp_path / "pics.idx"
    assert cli.main(["index", str(gallery / "cat.jpg"), "--db", str(db), "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["search", "a cat", "--db", str(db), "--model", str(db)]) == 2
    assert f"{db} is an index (polymodal index --db), not a model; it was built with lite: pass that" in \
        capsys.readouterr().err
    assert cli.main(["classify", str(gallery / "cat.jpg"), "--labels", "cat,dog", "--model", str(db)]) == 2
    assert "is an index (polymodal index --db), not a model" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_one_short_line(pairs, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--out", str(run), "--epochs", "1",
                     "--embed-dim", "16", "--val-fraction", "0", "--quiet"]) == 0
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    capsys.readouterr()
    assert cli.main(["train", "contrastive", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {checkpoint} (PytorchStreamReader failed reading zip archive: failed finding central " \
           "directory): it is damaged" in err and "miniz" not in err


def test_a_photo_found_by_itself_scores_at_most_1(tmp_path):
    """POST /v1/search with a photo in the index answered "score": 1.0000001192092896 (float32 rounding)."""
    import numpy as np
    from PIL import Image

    from polymodal.index import ImageIndex
    from tests.test_index import FakeModel

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(60):
        Image.new("RGB", (8, 8), tuple(int(c) for c in rng.integers(0, 256, 3))).save(folder / f"{i}.png")
    model, index = FakeModel(dim=384), ImageIndex(tmp_path / "db")
    index.update(folder, model, progress=False)
    vectors = model.encode_image([str(folder / f"{i}.png") for i in range(60)])
    scores = [hits[0].score for hits in index.search(vectors, k=1)]
    assert max(scores) <= 1.0 and min(scores) > 0.999


def test_loading_a_trained_model_folder_does_not_import_transformers(tmp_path):
    """Every model folder went through an import of the CLIP loaders, which bring transformers: ~2 s of each
    `polymodal search` on an index built with a fine-tuned model (a helper timed 5.6 s per search)."""
    import subprocess
    import sys

    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    folder = DualEncoder(DualEncoderConfig(embed_dim=16)).save(tmp_path / "model")
    code = ("import sys, polymodal; m = polymodal.load(sys.argv[1]); "
            "print(m.encode_text(['a dog']).shape, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["(1,", "16)", "False"], out.stderr[-2000:]


# -- a read-through of the whole change (helper): serve settles --runtime auto per model --------------------------------
from tests.test_cli_encoders_audit import photos, spy_load  # noqa: E402,F401 - fixtures


def test_serve_settles_auto_per_model(spy_load, photos, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`serve --db LITE_INDEX --vqa-model VQA_EXPORT` (no --runtime) ran every model with the runtime of --model or
    the index's model, so the export was loaded with torch and refused; each model now runs by its own kind, and
    --threads reaches the onnx ones only (torch's loaders refuse the option)."""
    uvicorn = pytest.importorskip("uvicorn")
    from polymodal.export.runtime import ONNX_CONFIG

    db = tmp_path / "db"
    assert cli.main(["index", str(photos), "--db", str(db), "--model", "fake", "--json"]) == 0
    export = tmp_path / "vqa-export"
    export.mkdir()
    (export / ONNX_CONFIG).write_text("{}")
    spy_load.models[str(export)] = spy_load.models["fake-vqa"]
    spy_load.models["fake-vqa"].key = "fake-vqa@1"  # what the app's docs name

    async def started(self):
        pass

    monkeypatch.setattr(uvicorn.Server, "main_loop", started)
    capsys.readouterr()
    spy_load.calls.clear()
    assert cli.main(["serve", "--db", str(db), "--port", "0", "--vqa-model", str(export), "--threads", "1"]) == 0
    calls = {c["name"]: c for c in spy_load.calls}
    assert calls["fake"]["runtime"] == "torch" and "threads" not in calls["fake"]
    assert calls[str(export)]["runtime"] == "onnx" and calls[str(export)]["threads"] == 1


def test_create_app_with_bf16_leaves_a_vqa_model_without_the_tower_in_fp32(spy_load, photos, tmp_path, monkeypatch):  # noqa: F811
    """create_app's default runtime became "auto", and its check `runtime != "torch"` then sent bf16 to every model:
    a VQA model without EfficientNet-Lite0 (coco-yesno) beside a bf16 embedding model was refused."""
    pytest.importorskip("fastapi")
    from polymodal import registry
    from polymodal.serve.app import create_app

    db = tmp_path / "db"
    assert cli.main(["index", str(photos), "--db", str(db), "--model", "fake", "--json"]) == 0
    set_to = []
    spy_load.models["fake-vqa"].key = "fake-vqa@1"
    monkeypatch.setattr(registry, "set_image_precision", lambda model, key, precision: set_to.append((key, precision)))
    create_app("fake", db, vqa_model="fake-vqa", precision="bf16")
    assert set_to == [("fake", "bf16")]  # the VQA model has no image tower: left in fp32
    assert all(c["precision"] == "fp32" for c in spy_load.calls)  # bf16 is set after loading, where it applies


def test_the_index_speed_tip_for_a_model_folder_names_out(gallery, tmp_path, monkeypatch, capsys):
    """The tip said `polymodal export onnx FOLDER`, which a folder refuses without --out (and --runtime onnx with
    the saved model itself is refused too)."""
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    folder = DualEncoder(DualEncoderConfig(embed_dim=16)).save(tmp_path / "model")
    monkeypatch.setattr(cli, "TIP_RUNTIME_AT", 1)
    assert cli.main(["index", str(gallery / "cat.jpg"), "--db", str(tmp_path / "db"), "--model", str(folder)]) == 0
    err = capsys.readouterr().err
    assert f"(with --model DIR after `polymodal export onnx {folder} --out DIR`)" in err


def test_resuming_a_finished_run_is_one_line_before_the_data_is_read(gallery, tmp_path, capsys, caplog):
    """It read (and warned about) the data first: three lines, and on a large data set minutes, before the refusal."""
    rows = [{"image": str(gallery / f"{n}.jpg"), "caption": d} for n, d in PHOTOS.items()]
    rows.append({"image": "missing.jpg", "caption": "a photo that is not there"})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert cli.main(["train", "contrastive", "--pairs", str(data), "--out", str(run), "--epochs", "1",
                     "--embed-dim", "16", "--val-fraction", "0", "--quiet"]) == 0
    assert "missing.jpg" in caplog.text  # the data's warning, as a resume that reads the data prints it again
    caplog.clear()
    capsys.readouterr()
    assert cli.main(["train", "contrastive", "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the run in {run} already trained 1 epochs; pass --epochs 2 or more" in err
    assert "missing.jpg" not in caplog.text
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert cli.main(["train", "contrastive", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 2
    assert "it is damaged" in capsys.readouterr().err and "missing.jpg" not in caplog.text
