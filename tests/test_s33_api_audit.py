"""Findings of stop 33's Python API walkthrough: the captioner decodes without transformers (two threads captioning a
fresh model raced on its lazy import), integer image arrays are 0-255 whatever their values, coco-yesno's encoders
take one string as one input, labels differing in case or spaces are one label, and importing polymodal leaves
Pillow's warning filters alone."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from polymodal.errors import PolymodalError


def test_the_captioner_decodes_as_transformers_does_without_importing_it():
    from polymodal.encoders.text import SentenceEncoder, minilm_path

    encoder = SentenceEncoder(minilm_path())
    hf = encoder.tokenizer  # the reference (imports transformers in this process: hence the subprocess below)
    for text in ["two dogs are playing in the grass .", "a man's hat , isn't it ? e.g. 3.5 m", "co-op [UNK] x"]:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert encoder.decode(ids) == hf.decode(ids)
    script = textwrap.dedent("""
        import sys
        from polymodal.models.captioner import Captioner, CaptionerConfig
        model = Captioner(CaptionerConfig())
        ids = model._text[0]._fast.tok.encode("two dogs are playing .", add_special_tokens=False).ids
        print(model.decode(ids))
        print("transformers" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["two dogs are playing.", "False"]


def test_integer_arrays_are_0_255_whatever_their_dtype_and_floats_0_1_are_scaled():
    from polymodal.data.images import load_image

    mask = np.zeros((8, 8, 3), np.uint8)
    mask[:4] = 1
    as_uint8 = np.asarray(load_image(mask))
    assert as_uint8.max() == 1
    for dtype in (np.int64, np.int32, np.int16, np.uint32):
        assert np.array_equal(np.asarray(load_image(mask.astype(dtype))), as_uint8), dtype
    assert np.asarray(load_image(mask.astype(np.float32))).max() == 255  # floats in [0, 1] are 0-1 pixels
    assert np.asarray(load_image(mask.astype(bool))).max() == 255
    assert np.asarray(load_image(mask.astype(np.int64) * 200)).max() == 200


def test_coco_yesno_encoders_take_one_string_as_one_input(coco_yesno, gallery):
    photo = str(gallery / "cat.jpg")
    assert coco_yesno.encode_images(photo)["default"].shape == (1, 384)
    assert coco_yesno.encode_images([photo, photo])["conse"].shape == (2, 384)
    emb = coco_yesno.encode_questions("Isit")
    assert all(v.shape == (1, 384) for v in emb.values())
    with pytest.raises(PolymodalError, match="batch_size"):
        coco_yesno.encode_images(photo, batch_size=0)
    with pytest.raises(PolymodalError, match="questions must be a string"):
        coco_yesno.encode_questions(None)


def test_labels_differing_in_case_or_spaces_are_one_label(lite, gallery, caplog):
    photo = gallery / "cat.jpg"
    with caplog.at_level(logging.WARNING):
        ranked = lite.classify(photo, ["Cat", "cat ", "rocket", "cat"])[0]
    assert sorted(label for label, _ in ranked) == ["Cat", "rocket"]  # the first spelling, once
    assert abs(sum(score for _, score in ranked) - 1.0) < 1e-6
    assert "one label: 'cat ' as 'Cat'" in caplog.text and "'cat' as 'Cat'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        lite.classify(photo, ["cat", "cat", "rocket"])  # an exact repeat is merged without a word, as before
    assert "one label" not in caplog.text


def test_the_cli_and_the_server_say_case_variants_are_one_label(lite, gallery, capsys, db):
    from fastapi.testclient import TestClient

    from polymodal import cli
    from polymodal.serve import create_app

    assert cli.main(["classify", str(gallery / "cat.jpg"), "--labels", "Cat,cat ", "--model", "lite"]) == 0
    assert "with one label every image scores 1.000" in capsys.readouterr().err
    with TestClient(create_app(lite, db)) as c:
        files = {"image": ("cat.jpg", (gallery / "cat.jpg").read_bytes(), "image/jpeg")}
        reply = c.post("/v1/classify", files=files, data={"labels": "Cat,cat,rocket"}).json()
    assert [x["label"] for x in reply["results"][0]["labels"]] in (["Cat", "rocket"], ["rocket", "Cat"])
    assert reply["warnings"] == ["labels differing only in case or spaces are one label: 'cat' as 'Cat'"]


def test_importing_polymodal_leaves_pillows_warning_filters_alone_and_the_cli_quiets_them():
    script = textwrap.dedent("""
        import warnings
        from PIL import Image
        import polymodal, polymodal.data.images
        quiet = lambda: any(f[2] is Image.DecompressionBombWarning for f in warnings.filters)
        print(quiet())
        polymodal.data.images.quiet_pillow_size_warnings()
        print(quiet())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


# -- stop 33's training-recipe walkthrough ------------------------------------------------------------------------


def test_two_threads_on_a_model_in_train_mode_both_run_in_eval_mode():
    """The first call to enter restored train mode when it finished, switching dropout back on under a later call
    still running."""
    import threading

    import torch

    from polymodal.models.modes import in_eval_mode

    class Model(torch.nn.Module):
        @in_eval_mode
        def call(self, name, inside, release):
            inside.set()
            release.wait(10)
            seen[name] = self.training

    seen = {}
    model = Model().train()
    events = {name: (threading.Event(), threading.Event()) for name in ("first", "second")}
    threads = {name: threading.Thread(target=model.call, args=(name, *events[name])) for name in events}
    for name in ("first", "second"):  # both inside, in this order
        threads[name].start()
        events[name][0].wait(10)
    events["first"][1].set()
    threads["first"].join(10)
    assert model.training is False  # the second call is still running: the mode stays eval
    events["second"][1].set()
    threads["second"].join(10)
    assert seen == {"first": False, "second": False} and model.training is True  # the last one out restores it
    with pytest.raises(ZeroDivisionError):  # an error restores it too
        in_eval_mode(lambda self: 1 / 0)(model)
    assert model.training is True


def test_a_vocabulary_of_one_answer_is_refused_however_it_comes_about():
    from polymodal.train.vqa import VQARecipe

    with pytest.raises(PolymodalError, match="max_answers must be at least 2"):
        VQARecipe(qa=["qa.jsonl"], out="run", max_answers=1).validate()


def test_a_misspelt_early_stop_metric_is_one_error_and_leaves_no_run_files(tmp_path):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from polymodal.train.objectives import Objective
    from polymodal.train.trainer import TrainConfig, Trainer

    class Pull(Objective):
        def compute(self, model, batch):
            return model(batch[0]).pow(2).mean(), {}

    def run(metric, score_start=False):
        loader = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=4)
        config = TrainConfig(epochs=2, warmup_steps=1, early_stop_metric=metric)
        trainer = Trainer(torch.nn.Linear(3, 1), {"pull": (Pull(), 1.0, loader)}, config, tmp_path / "run",
                          lambda m: {"val/accuracy": 0.5, "val/loss": 1.0}, progress=False)
        return trainer.fit(score_start=score_start)

    for score_start in (False, True):
        with pytest.raises(PolymodalError, match="early_stop_metric 'val/acc' is not among the validation metrics "
                                                 "\\(val/accuracy, val/loss\\)"):
            run("val/acc", score_start)
        assert not list((tmp_path / "run").iterdir())  # no metrics, no checkpoint: nothing to resume or overwrite
    assert run("val/accuracy")["epoch"] == 2


def test_contrastive_training_without_validation_pairs_keeps_the_best_zero_shot_epoch(gallery, tmp_path, capsys):
    """Zero-shot labels are then the only validation: the default metric (recall, not measured) would now be an
    error, so the run follows zero-shot top-1."""
    import json

    from polymodal import cli
    from polymodal.data.samples import SKIMAGE_PHOTOS
    from polymodal.train.metrics import read_metrics

    pairs, labels = tmp_path / "pairs.jsonl", tmp_path / "labels.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "caption": d}) + "\n"
                             for n, (_, d) in SKIMAGE_PHOTOS.items()))
    labels.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "label": n}) + "\n"
                              for n in ("cat", "coffee", "rocket")))
    assert cli.main(["train", "contrastive", "--pairs", str(pairs), "--val-fraction", "0", "--zeroshot-labels",
                     str(labels), "--out", str(tmp_path / "run"), "--quiet", "--epochs", "1", "--batch-size", "4",
                     "--embed-dim", "32"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "val/zeroshot_top1" in result["best"] and "val/rsum" not in result["best"]
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["train"]["early_stop_metric"] == \
        "val/zeroshot_top1"
    assert [r["epoch"] for r in read_metrics(tmp_path / "run") if r["split"] == "val"] == [1]
