"""Exports and provenance (helper s52/exportprov).

- `polymodal export onnx RUN/model --out EXP` left RUN/model/trained_with.json behind: `info --model EXP` said
  "not recorded", so a served export had no word of its training; `model.save(other)` of a loaded model left it
  behind too. Both now carry it, as they carry training_photos.txt (and an export folder holding it is still an
  earlier export that a new one may replace).
- A run trained from Python recorded sys.argv as its command: in Jupyter, the kernel's launcher
  (`ipykernel_launcher.py -f kernel-....json`), which says nothing about how to train again. It now records the
  training call and where it ran ("from Python: polymodal.train.contrastive.train_contrastive(ContrastiveRecipe(...))
  with the recipe in settings, in a Jupyter kernel").
- `polymodal export onnx EMPTY_FOLDER` asked for --out before saying the folder holds no model.
- A variant whose graph this onnxruntime cannot load (1.19, the floor: the int8 step graph its own quantizer made of
  the captioner, "[ShapeInferenceError] Incompatible dimensions") was reported as "<the export's temporary folder> is
  an incomplete or damaged export (...); export the model again", cut at 200 characters before onnxruntime's reason.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from polymodal import cli

KERNEL_ARGV = ["/venv/lib/python3.11/site-packages/ipykernel_launcher.py", "-f",
               "/root/.local/share/jupyter/runtime/kernel-4f1c.json"]


@pytest.fixture(scope="module")
def notebook_run(gallery, tmp_path_factory):
    """A tiny contrastive run trained from Python under a Jupyter kernel's sys.argv (its own folder)."""
    from polymodal.data.samples import SKIMAGE_PHOTOS
    from polymodal.train.contrastive import ContrastiveRecipe, train_contrastive

    folder = tmp_path_factory.mktemp("s52-notebook")
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{name}.jpg"), "caption": desc}) + "\n"
                             for name, (_, desc) in SKIMAGE_PHOTOS.items()))
    argv = sys.argv
    sys.argv = KERNEL_ARGV
    try:
        train_contrastive(ContrastiveRecipe(pairs=str(pairs), out=str(folder / "run"), val_pairs=[str(pairs)],
                                            arch={"embed_dim": 16}, train={"epochs": 1, "seed": 5}), progress=False)
    finally:
        sys.argv = argv
    return folder / "run"


def test_a_run_trained_from_a_notebook_records_the_call_not_the_kernel_launcher(notebook_run, capsys):
    record = json.loads((notebook_run / "model" / "trained_with.json").read_text())
    assert record["command"] == ("from Python: polymodal.train.contrastive.train_contrastive(ContrastiveRecipe(...)) "
                                 "with the recipe in settings, in a Jupyter kernel")
    assert cli.main(["info", "--model", str(notebook_run / "model")]) == 0
    out = capsys.readouterr().out
    assert "ipykernel_launcher" not in out and re.search(r"^command +from Python: .*train_contrastive", out, re.M)


@pytest.mark.parametrize("argv, where", [
    (["train.py", "--epochs", "3"], "run as `python train.py --epochs 3`"),
    (["-c"], "in an interactive session or `python -c`"),
    ([""], "in an interactive session or `python -c`"),
    (["/venv/lib/python3.11/site-packages/ipykernel/__main__.py", "-f", "k.json"], "in a Jupyter kernel"),
    (["/usr/bin/ipython"], "in an IPython session"),  # (it read "run as `/usr/bin/ipython`")
])
def test_where_a_run_from_python_was_started_is_said(monkeypatch, argv, where):
    from polymodal.trained_with import _command, python_call
    from polymodal.train.vqa import VQARecipe, train_vqa

    monkeypatch.setattr(sys, "argv", argv)
    call = python_call(train_vqa, VQARecipe(qa="qa.jsonl", out="runs/vqa"), resume=True)
    assert _command(call) == (f"from Python: polymodal.train.vqa.train_vqa(VQARecipe(...), resume=True) with the "
                              f"recipe in settings, {where}")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/polymodal", "train", "vqa"])  # the CLI: its command line
    assert _command(call) == ["polymodal", "train", "vqa"]


def test_a_model_saved_again_from_python_keeps_how_it_was_trained(notebook_run, tmp_path, capsys):
    import polymodal

    copy = tmp_path / "copy"
    polymodal.load(str(notebook_run / "model")).save(copy)
    assert (copy / "trained_with.json").read_bytes() == (notebook_run / "model" / "trained_with.json").read_bytes()
    assert cli.main(["info", "--model", str(copy)]) == 0
    assert re.search(r"^seed +5$", capsys.readouterr().out, re.M)


def test_an_onnx_export_says_how_its_model_was_trained(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from conftest import skip_unless_clip_exports
    from test_clip_checkpoints import make_tiny_clip

    from polymodal.data.samples import write_sample_gallery
    from polymodal.export.out_folder import check_out_folder
    from polymodal.trained_with import FILE_NAME, trained_with, write_trained_with

    skip_unless_clip_exports()
    model = make_tiny_clip(tmp_path / "tiny-clip")  # a CLIP folder stands for RUN/model: it exports in seconds
    write_trained_with(model, trained_with({"train": {"seed": 11}, "pairs": ["/data/pairs.jsonl"]}))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(p), "caption": p.stem}) + "\n"
                             for p in write_sample_gallery(tmp_path / "photos")[:4]))
    out = tmp_path / "exp"
    assert cli.main(["export", "onnx", str(model), "--out", str(out), "--variants", "", "--val-pairs", str(pairs),
                     "--timing-seconds", "0.02", "--json"]) == 0
    assert (out / FILE_NAME).read_bytes() == (model / FILE_NAME).read_bytes()
    capsys.readouterr()
    assert cli.main(["info", "--model", str(out)]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"^seed +11$", shown, re.M) and re.search(r"^data +/data/pairs.jsonl$", shown, re.M), shown
    check_out_folder(out, "--out")  # an earlier export holding the record is still one an export may replace


def test_exporting_a_folder_that_holds_no_model_says_so_before_asking_for_out(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["export", "onnx", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{empty} holds no model" in err and "--out" not in err, err
    (tmp_path / "run" / "model").mkdir(parents=True)  # a run folder: its model is RUN/model
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    assert cli.main(["export", "onnx", str(tmp_path / "run")]) == 2
    assert "is a training run folder; its model is" in capsys.readouterr().err


# onnxruntime's classes for a graph it refuses and for an operator it has no kernel (onnx_session reads the names)
Fail, NoKernel = type("Fail", (Exception,), {}), type("NotImplemented", (Exception,), {})


def test_a_variant_this_onnxruntime_cannot_load_is_not_called_a_damaged_export(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    from conftest import skip_unless_clip_exports
    from test_clip_checkpoints import make_tiny_clip
    from test_onnx import _few_photos

    from polymodal.export.onnx_export import export_onnx
    from polymodal.models.clip import load_clip

    skip_unless_clip_exports()
    real = ort.InferenceSession
    said = {"image": NoKernel("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation "
                              "for ConvInteger(10) node with name '/_conv_stem/Conv_quant'"),
            "text": Fail("[ONNXRuntimeError] : 1 : FAIL : Node (/Add) Op (Add) [ShapeInferenceError] Incompatible "
                         "dimensions")}  # what onnxruntime 1.19.2 said of its own int8_dynamic graphs

    def session(path, *args, **kwargs):
        if ".int8_dynamic." in str(path):
            raise said[str(path).rsplit("/", 1)[-1].split(".")[0]]
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    model = load_clip(make_tiny_clip(tmp_path / "tiny-clip"))
    report = export_onnx(model, tmp_path / "a" / "long" / "way" / "down" / "to" / "the" / "export", _few_photos(),
                         variants=["int8_dynamic"], timing_seconds=0.02)
    failed = {r["tower"]: r["reason"] for r in report["tries"] if r["status"] == "failed"}
    assert failed == {tower: f"failed here: onnxruntime {ort.__version__} cannot load this variant's graph "
                             f"({said[tower]}); a newer onnxruntime may (pip install -U onnxruntime, then export "
                             "again)" for tower in ("image", "text")}
    assert report["served"] == {"image": "fp32", "text": "fp32"}


def test_an_export_from_python_carries_the_models_records(tmp_path):
    """`polymodal export onnx` copied them, but export_onnx(model, out) from Python did not: a model loaded from a
    folder (its loaded_from) now brings its training photos and trained_with.json to any export (stop 52)."""
    from types import SimpleNamespace

    from polymodal.export.out_folder import staged_export
    from polymodal.trained_with import FILE_NAME, trained_with, write_trained_with
    from polymodal.training_photos import FILE_NAME as PHOTOS

    trained = tmp_path / "run" / "model"
    trained.mkdir(parents=True)
    write_trained_with(trained, trained_with({"train": {"seed": 5}}))
    (trained / PHOTOS).write_text("0" * 64 + "\n")

    @staged_export
    def export(model, out):  # stands for export_onnx and its kin
        (out / "image.fp32.onnx").write_bytes(b"graph")
        return {}

    export(SimpleNamespace(loaded_from=trained), tmp_path / "exp")
    for name in (FILE_NAME, PHOTOS):
        assert (tmp_path / "exp" / name).read_bytes() == (trained / name).read_bytes()
    export(SimpleNamespace(), tmp_path / "exp2")  # a model from no folder: nothing to carry
    assert sorted(p.name for p in (tmp_path / "exp2").iterdir()) == ["image.fp32.onnx"]
