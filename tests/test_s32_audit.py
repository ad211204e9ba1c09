"""Mutation audit of the s32 changes (8f02f10..73e3881: eval --strict stops at the first unreadable photo, the
class-balanced interval, the bounded inverted-mask check, the drifting-ITM-head warning, the class-prompt bar, the
captioning bar as a `with` block): each test here fails on a mutation the earlier tests let through. Fakes stand in
for the models, so the file runs in seconds."""

import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import polymodal
import polymodal.progress
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.eval.bootstrap import bootstrap_ci
from polymodal.eval.per_item import strict_reading
from polymodal.models.inputs import Unreadable, each_or_error, stop_at_first_unreadable

from test_eval_data_audit import FakeEmbedder, prompt_vector
from test_s30b_audit import StemModel


def _fails_on_bad(chunk):
    if "bad" in chunk:
        raise PolymodalError("cannot read bad")
    return list(chunk)


# -- strict_reading / stop_at_first_unreadable -------------------------------------------------------------------------


def test_strict_reading_passes_other_errors_through_unchanged():
    # only Unreadable becomes "an unreadable image": check_strict's "--strict: 1 skipped row", a bad option, a
    # missing file keep their own words (and are not said to be an unreadable image)
    for message in ("--strict: 1 skipped row (see the warnings above)", "--limit must be at least 1, got 0"):
        with pytest.raises(PolymodalError) as err, strict_reading(SimpleNamespace(strict=True)):
            raise PolymodalError(message)
        assert str(err.value) == message


def test_an_unreadable_item_is_a_polymodal_error_for_library_callers():
    # polymodal's errors are PolymodalError: a caller of stop_at_first_unreadable() catching those catches it too
    with pytest.raises(PolymodalError, match="cannot read bad"), stop_at_first_unreadable():
        each_or_error(_fails_on_bad, ["ok", "bad", "ok"])


def test_stopping_at_the_first_unreadable_is_for_the_calling_thread_only():
    # a strict evaluation in one thread leaves another thread's passes (a service's requests) as they were
    seen = {}

    def other_thread():
        seen["results"] = each_or_error(_fails_on_bad, ["ok", "bad"])

    with stop_at_first_unreadable():
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        with pytest.raises(Unreadable):
            each_or_error(_fails_on_bad, ["ok", "bad"])
    assert seen["results"] == ["ok", "cannot read bad"]
    assert each_or_error(_fails_on_bad, ["bad"]) == ["cannot read bad"]  # and only inside it


# -- the class-balanced interval ----------------------------------------------------------------------------------------


def test_the_balanced_mean_is_over_the_classes_drawn_only():
    # a class of one photo is left out of about a third of the resamples: it is absent there, not a class scored 0
    values = np.array([1.0] * 49 + [0.0] + [1.0])
    labels = ["common"] * 50 + ["rare"]
    low, high = bootstrap_ci(values, by=labels)
    assert 0.9 < low <= high <= 1.0


@pytest.fixture()
def stem(monkeypatch):
    monkeypatch.setattr(polymodal, "load", lambda name, runtime="torch", **kw: StemModel())


def test_eval_zeroshot_balances_the_interval_over_labels_not_photos(gallery, tmp_path, capsys, stem):
    # four photos labelled cat (one of them is a cat), one motorcycle photo labelled motorcycle: one row per photo,
    # so a mean over photos is the plain top-1 (2 of 5), the balanced one is (1/4 + 1) / 2
    rows = [{"image": str(gallery / f"{p}.jpg"), "label": "cat"} for p in ("cat", "rocket", "coffee", "astronaut")]
    rows.append({"image": str(gallery / "motorcycle.jpg"), "label": "motorcycle"})
    labels, classes = tmp_path / "labels.jsonl", tmp_path / "classes.txt"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    classes.write_text("\n".join(["cat", "rocket", "coffee", "astronaut", "motorcycle"]) + "\n")
    assert cli.main(["eval", "zeroshot", "--labels-file", str(labels), "--classes", str(classes), "--model", "stem",
                     "--ci"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    hits = np.array([1, 0, 0, 0, 1], dtype=float)
    photos = [r["image"] for r in rows]
    assert result["balanced_top1"] == 0.625
    assert result["balanced_top1_ci95"] == bootstrap_ci(hits, photos, by=[r["label"] for r in rows])
    assert result["balanced_top1_ci95"] != bootstrap_ci(hits, photos, by=photos)


# -- the drifting ITM head -----------------------------------------------------------------------------------------------


def _itm_model():
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    torch.manual_seed(0)
    return FusionEncoder(FusionEncoderConfig(fusion="cross_attention", dim=16, dropout=0.0, itm_head=True,
                                             answers=["yes", "no"]))


def test_fusion_training_under_frozen_projections_still_drifts_the_itm_head(caplog):
    from polymodal.train.vqa import warn_of_a_drifting_itm_head

    model = _itm_model()
    model.freeze("projections")  # the fusion layers under the head still train
    with caplog.at_level(logging.WARNING, logger="polymodal.train.vqa"):
        assert warn_of_a_drifting_itm_head(model, 0.0, "m")
    model.freeze("fusion")
    assert not warn_of_a_drifting_itm_head(model, 0.0, "m")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("itm_weight", [0.0, 0.5])
def test_train_vqa_asks_about_the_itm_head_with_the_runs_itm_weight(itm_weight, monkeypatch, tmp_path):
    from polymodal.eval.vqa import QARow
    from polymodal.train import fusion_run, vqa

    rows = [QARow("a.jpg", "q0", "yes"), QARow("b.jpg", "q1", "no")]
    model = _itm_model()
    asked = []

    def warn(m, weight, name):
        asked.append((m, weight, name))
        raise _Stop  # what follows (question features, training) is not this test's business

    monkeypatch.setattr(fusion_run, "continued_folder", lambda path, task: Path(path))  # the run's start checks it
    monkeypatch.setattr(vqa, "read_qa", lambda paths: list(rows))
    monkeypatch.setattr(vqa, "build_vqa_model", lambda recipe, train_rows: model)
    monkeypatch.setattr(vqa, "readable_qa", lambda m, r, source, progress: (vqa.EncodedQA.from_rows(r), None))
    monkeypatch.setattr(vqa, "warn_of_a_drifting_itm_head", warn)
    recipe = vqa.VQARecipe(qa=["qa.jsonl"], out=str(tmp_path / "run"), model="runs/pt/model", itm_weight=itm_weight,
                           val_fraction=0.0)
    with pytest.raises(_Stop):
        vqa.train_vqa(recipe, progress=False)
    assert asked == [(model, itm_weight, "runs/pt/model")]


# -- the class-prompt bar --------------------------------------------------------------------------------------------


def test_zeroshot_accuracy_shows_the_class_prompt_bar_when_asked(capsys):
    from polymodal.eval.zeroshot import zeroshot_accuracy

    labels = ["cat", "dog", "cat"]
    emb = np.stack([prompt_vector(f"a photo of a {label}.") for label in labels])
    zeroshot_accuracy(FakeEmbedder(), ["a", "b", "c"], labels, templates=("a photo of a {}.",), image_emb=emb,
                      progress=True)
    assert "class prompts" in capsys.readouterr().err
    zeroshot_accuracy(FakeEmbedder(), ["a", "b", "c"], labels, templates=("a photo of a {}.",), image_emb=emb,
                      progress=False)
    assert "class prompts" not in capsys.readouterr().err


# -- the captioning bar ----------------------------------------------------------------------------------------------


@pytest.fixture()
def bars(monkeypatch):
    made, real = [], polymodal.progress.progress_bar

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(polymodal.progress, "progress_bar", recording)
    return made


class _Says:
    """Captions a photo "a photo"; notes how far the captioning bar had got at each call; a broken photo raises."""

    def __init__(self, bars):
        self.bars, self.seen = bars, []

    def caption(self, images, **decoding):
        self.seen.append(self.bars[-1].n)
        return ["a photo"] * len(images)


def _pairs(gallery, tmp_path, broken: bool):
    from polymodal.data.pairs import Pair, PairSet

    paths = [gallery / "cat.jpg", gallery / "rocket.jpg", gallery / "coffee.jpg"]
    if broken:
        (tmp_path / "broken.jpg").write_text("not a photo")
        paths.insert(1, tmp_path / "broken.jpg")
    return PairSet.from_pairs([Pair(str(p), "a photo") for p in paths])


def test_the_captioning_bar_counts_each_batch_and_ends_full(gallery, tmp_path, bars, capsys):
    from polymodal.eval.captions import evaluate_captions

    model = _Says(bars)
    out = evaluate_captions(model, _pairs(gallery, tmp_path, broken=True), progress=True, batch_size=1)
    assert (out["images"], out["unreadable"]) == (3, 1)
    assert model.seen == [0, 1, 2]  # each batch counted as it is captioned (the broken one never reaches the model)
    assert bars[0].n == bars[0].total == 4  # the unreadable photo was looked at too
    assert bars[0].disable  # closed


def test_the_captioning_bar_is_closed_when_strict_stops_the_pass(gallery, tmp_path, bars, capsys):
    from polymodal.eval.captions import evaluate_captions

    with pytest.raises(Unreadable, match="broken.jpg"), stop_at_first_unreadable():
        evaluate_captions(_Says(bars), _pairs(gallery, tmp_path, broken=True), progress=True, batch_size=2)
    assert len(bars) == 1 and bars[0].disable  # tqdm's close(): no bar left open (its monitor, its line)


# -- bugs the audit found, fixed in s32 --------------------------------------------------------------------------------


def test_eager_calls_between_compiled_ones_do_not_recompile():
    import torch._dynamo
    import torch._dynamo.testing

    from polymodal.fusion import build_fusion

    class Pooled(torch.nn.Module):
        def __init__(self, fusion):
            super().__init__()
            self.fusion = fusion

        def forward(self, a, b, m):
            return self.fusion([a, b], [None, m]).pooled

    module = Pooled(build_fusion("concat", [8, 8], 8).eval())
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).bool()
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(module, backend=counter)
    with torch.no_grad():
        for _ in range(3):
            compiled(torch.randn(3, 8), torch.randn(3, 5, 8), mask)
            module(torch.randn(3, 8), torch.randn(3, 5, 8), mask)  # eager: one of the first 16 checks
    torch._dynamo.reset()
    assert counter.frame_count == 1


def test_eval_vqa_strict_on_a_fusion_encoder_stops_at_the_first_unreadable_photo(gallery, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    photos = [broken] + [gallery / f"{n}.jpg" for n in ("cat", "rocket")]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"image": str(p), "question": "what color is the shape?", "answer": "red"}) + "\n"
                          for p in photos))
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", "easy-vqa", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "--strict: an unreadable image: " in err and "broken.jpg" in err.split("--strict")[1]
